"""`filterkd-ray validate` rejects malformed specs with one line naming the field, exit 2,
and `sweep` with a bad spec creates no output folder."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from filterkd_ray.cli import main
from filterkd_ray.spec import load_spec

SMOKE = "sweeps/toy_smoke.yaml"


def base() -> dict:
    with open(SMOKE) as f:
        return yaml.safe_load(f)


def mutate(path: str, value):
    """Set (or with value=DELETE remove) a dotted key of the smoke spec."""
    raw = base()
    node, keys = raw, path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


# (description, spec dict or raw text, a substring the error line must contain)
BAD = [
    ("unknown top-level key", {**base(), "nme": "x"}, "nme"),
    ("typo in a nested key", mutate("data.noise.rate", [0.1]), "data.noise.rate"),
    ("seeds of the wrong type", mutate("seeds", "zero"), "seeds"),
    ("empty seeds", mutate("seeds", []), "seeds"),
    ("repeated seeds", mutate("seeds", [0, 0]), "seeds"),
    ("empty noise rates", mutate("data.noise.rates", []), "data.noise.rates"),
    ("noise rate above 1", mutate("data.noise.rates", [1.2]), "data.noise.rates"),
    ("negative noise rate", mutate("data.noise.rates", [-0.1]), "data.noise.rates"),
    ("unknown noise kind", mutate("data.noise.kind", "pairflip"), "data.noise.kind"),
    ("matrix kind without matrix", mutate("data.noise.kind", "matrix"), "data.noise"),
    ("unknown dataset", mutate("data.name", "mnist"), "data.name"),
    ("unknown dataset option", mutate("data.options", {"n_trian": 5}), "data"),
    ("unknown model", mutate("teacher.model", "resnet1000"), "teacher.model"),
    ("zero epochs", mutate("student.epochs", 0), "student.epochs"),
    ("lr of the wrong type", mutate("teacher.lr", "fast"), "teacher.lr"),
    ("step schedule without milestones", mutate("teacher.schedule", "step"), "teacher"),
    ("unknown method", mutate("methods", ["oht", "foo"]), "methods"),
    ("empty methods", mutate("methods", []), "methods"),
    ("zero search samples", mutate("search.num_samples", 0), "search.num_samples"),
    ("EMA rate range outside (0, 1]", mutate("search.space.filter_kd", {"ema_rate": {"low": 0.0, "high": 2.0}}),
     "ema_rate"),
    ("negative temperature", mutate("search.space.kd", {"temperature": -1.0}), "temperature"),
    ("distill weight above 1", mutate("search.space.kd", {"distill_weight": {"low": 0.5, "high": 1.5}}),
     "distill_weight"),
    ("label smoothing of 1", mutate("search.space.ls", {"ls_epsilon": 1.0}), "ls_epsilon"),
    ("unknown snapshot", mutate("search.space.filter_kd", {"snapshot": ["middle"]}), "snapshot"),
    ("inverted range", mutate("search.space.kd", {"temperature": {"low": 5.0, "high": 1.0}}), "search.space"),
    ("hyperparameter the method does not take", mutate("search.space.oht", {"temperature": 2.0}), "oht"),
    ("space for a method not run", {**mutate("methods", ["oht", "ls"]), "search": {"space": {"kd": {}}}}, "kd"),
    ("search seed not among the seeds", mutate("search.seeds", [5]), "search.seeds"),
    ("two search seeds (one is supported)", mutate("search.seeds", [0, 1]), "search.seeds"),
    ("GPU without GPUs per worker", mutate("scaling.use_gpu", True), "scaling"),
    ("fractional GPUs with DDP", mutate("scaling", {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}),
     "scaling"),
    ("bad sweep name", mutate("name", "bad name/x"), "name"),
    ("not a mapping", "- just\n- a list\n", "spec"),
    ("not YAML", "name: [unclosed\n", "YAML"),
]


@pytest.mark.parametrize("what,spec,field", BAD, ids=[b[0] for b in BAD])
def test_validate_rejects(tmp_path, capsys, what, spec, field):
    path = tmp_path / "spec.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and field in err, err
    # The same spec given to `sweep` fails before anything is written.
    assert main(["sweep", str(path), "--output", str(out)]) == 2
    assert not out.exists()


def test_at_least_twenty_malformed_specs():
    assert len(BAD) >= 20


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_overrides_apply_and_validate():
    spec = load_spec(SMOKE, ["search.num_samples=4", "seeds=[0,1,5]", "data.noise.rates=[0.2]"])
    assert spec.search.num_samples == 4 and spec.seeds == [0, 1, 5]
    assert spec.data.noise.rates == [0.2]


def test_bad_override_is_input_error(capsys):
    assert main(["validate", SMOKE, "--set", "search.num_samples"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["validate", SMOKE, "--set", "search.num_samples=-3"]) == 2
    assert "search.num_samples" in capsys.readouterr().err


def test_exit_code_from_the_console_script(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate("methods", ["nope"])))
    proc = subprocess.run([sys.executable, "-m", "filterkd_ray.cli", "validate", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: methods")


SWEEPS = sorted(Path(__file__).resolve().parents[1].glob("sweeps/*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_validates(path):
    """Every spec in sweeps/ loads (a field renamed in spec.py must be renamed there too)."""
    spec = load_spec(path)
    assert spec.name == path.stem


def test_run_with_a_bank_checks_the_ema_rate_before_training(capsys):
    """`run` refuses an EMA rate the bank does not keep before the teacher trains."""
    assert main(["run", SMOKE, "--method", "filter_kd", "--set", "path.mode=bank",
                 "--hp", "ema_rate=0.3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""                                  # no teacher line: nothing trained
    assert err.count("\n") == 1 and "--hp ema_rate=0.3" in err and "path.bank_rates" in err
