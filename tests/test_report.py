"""summary.md, report.md and the plots, built from a small REAL sweep folder (see
sweep_folder.py), checked against a direct pandas computation from trials.parquet."""
import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from filterkd_ray import InputError
from filterkd_ray import report
from filterkd_ray.results import Store

try:
    from sweep_folder import make_sweep_folder
except ImportError:   # tests/ imported as a package
    from tests.sweep_folder import make_sweep_folder

RATES = (0.0, 0.3)
METHODS = ("oht", "ls", "kd", "filter_kd")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_sweep_folder(root, noise_rates=RATES, seeds=(0, 1, 2), methods=METHODS)
    return root


@pytest.fixture(scope="module")
def written(folder):
    summary = report.write_summary(str(folder))
    text = report.write_report(str(folder))
    return summary, text


@pytest.fixture(scope="module")
def trials(folder):
    """trials.parquet read back independently of filterkd_ray (pyarrow only)."""
    return pq.read_table(folder / "trials.parquet").to_pandas()


def direct(trials, metric):
    """Per (rate, method): values per seed of the ok reproduce rows."""
    r = trials[(trials.stage == "reproduce") & (trials.status == "ok")]
    return {k: g.set_index("seed")[metric].dropna().sort_index()
            for k, g in r.groupby(["noise_rate", "method"])}


def ms(v: pd.Series) -> str:
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n#", start + len(heading))
    return md[start:end if end > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= set("-")]


# --- tables ---------------------------------------------------------------------------------

def test_summary_table_equals_direct_pandas(trials):
    vals = direct(trials, "test_acc")
    oht = {r: vals[(r, "oht")] for r in RATES}
    table = report.summary_table(trials, "test_acc")
    assert len(table) == len(RATES) * len(METHODS)
    assert set(table.source) == {"reproduce"}
    search = trials[(trials.stage == "search") & (trials.status == "ok")]
    for row in table.itertuples():
        v = vals[(row.noise_rate, row.method)]
        assert row.n == len(v) == 3
        assert row.mean == pytest.approx(v.mean(), abs=1e-12)
        assert row.std == pytest.approx(v.std(ddof=1), abs=1e-12)
        if row.method == "oht":
            assert row.diff_n == 0 and math.isnan(row.diff_mean)
        else:
            d = (v - oht[row.noise_rate]).dropna().to_numpy()
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            assert row.diff_n == len(d)
            assert (row.diff_mean, row.diff_lo, row.diff_hi) == pytest.approx(
                (d.mean(), d.mean() - half, d.mean() + half), abs=1e-12)
        g = search[(search.noise_rate == row.noise_rate) & (search.method == row.method)]
        top = g.loc[g.val_acc.idxmax()]
        assert row.best_trial_id == top.trial_id and row.best_val_acc == top.val_acc
        for p in ("ema_rate", "temperature", "distill_weight", "ls_epsilon"):
            assert (pd.isna(getattr(row, p)) and pd.isna(top[p])) or getattr(row, p) == top[p]


def test_summary_table_falls_back_to_best_search_run_per_seed(trials):
    search_only = trials[trials.stage != "reproduce"]
    table = report.summary_table(search_only, "test_acc")
    assert set(table.source) == {"search best"}
    for row in table.itertuples():
        g = search_only[(search_only.stage == "search") & (search_only.status == "ok")
                        & (search_only.noise_rate == row.noise_rate)
                        & (search_only.method == row.method)]
        assert row.n == 1     # the search ran on seed 0 only
        assert row.mean == g.loc[g.val_acc.idxmax(), "test_acc"]


def test_tied_selection_is_decided_by_nll_whatever_the_trial_ids(tmp_path):
    """Three trials tie on validation accuracy (as three toy KD trials did): the choice is the
    lowest validation NLL, for any trial ids, in the sweep's rule and the report's alike."""
    from pathlib import Path

    from filterkd_ray.jobs import write_run
    from filterkd_ray.spec import load_spec
    from filterkd_ray.sweep import Sweep
    smoke = Path(__file__).resolve().parents[1] / "sweeps" / "toy_smoke.yaml"
    rng = np.random.default_rng(0)
    for _ in range(5):
        ids = [f"search-r0.3-kd-{rng.integers(16**8):08x}" for _ in range(4)]
        rows = pd.DataFrame({"trial_id": ids, "stage": "search", "status": "ok", "method": "kd",
                             "noise_rate": 0.3, "seed": 0, "temperature": [1.0, 2.0, 4.0, 8.0],
                             "distill_weight": 0.5, "val_acc": [0.5886, 0.5886, 0.5886, 0.58],
                             "val_nll": [0.70, 0.65, 0.68, 0.60], "test_acc": 0.7})
        assert report.by_selection(rows, "val_acc").iloc[0].temperature == 2.0
        assert report.best_hparams(rows).temperature.iloc[0] == 2.0
        assert report.by_selection(rows, "val_nll").iloc[0].temperature == 8.0
    sweep = Sweep(load_spec(smoke), str(tmp_path / "s"), log=lambda *a: None)
    sweep.store.makedirs()
    for r in rows.to_dict("records"):          # the sweep reads its row files
        write_run(sweep.store, r["trial_id"], r, [])
    assert sweep.best_configs()[(0.3, "kd")] == {"temperature": 2.0, "distill_weight": 0.5}


def test_summary_table_without_oht_or_rows():
    empty = pd.DataFrame(columns=report.REQUIRED)
    assert report.summary_table(empty).empty
    with pytest.raises(InputError, match="'nope' is not a column"):
        report.summary_table(empty, "nope")


def test_summary_md_numbers_equal_direct_pandas(written, trials):
    summary, _ = written
    rows = {(r[0], r[1]): r for r in table_rows(summary)[1:]}
    assert len(rows) == len(RATES) * len(METHODS)
    for col, metric in ((3, "test_acc"), (4, "test_acc_last"), (5, "test_ece"),
                        (6, "label_dist_pstar"), (7, "label_recovery")):
        for (rate, method), v in direct(trials, metric).items():
            cell = rows[(f"{rate:g}", method)][col]
            assert cell == (ms(v) if len(v) else "—"), (metric, rate, method)
    acc = direct(trials, "test_acc")
    for rate in RATES:
        d = (acc[(rate, "filter_kd")] - acc[(rate, "oht")]).to_numpy()
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        want = f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] (n=3)"
        assert rows[(f"{rate:g}", "filter_kd")][8] == want
    head = summary.split("\n|")[0]
    for text in ("report-fixture", "seeds [0, 1, 2]", "filterkd_ray 0.1.0", "commit `"):
        assert text in head
    assert "1 run(s) not ok: failed: 1" in summary


def test_report_tables_in_paper_shape(written, trials):
    _, md = written
    for heading, metric, higher in (("### test accuracy (best-validation epoch)", "test_acc", True),
                                    ("### test ECE", "test_ece", False)):
        rows = table_rows(section(md, heading))
        assert rows[0] == ["method"] + [f"noise {r:g}" for r in RATES]
        assert [r[0] for r in rows[1:]] == list(METHODS)
        vals = direct(trials, metric)
        for j, rate in enumerate(RATES, start=1):
            means = {m: vals[(rate, m)].mean() for m in METHODS}
            best = max(means.values()) if higher else min(means.values())
            for r in rows[1:]:
                v = vals[(rate, r[0])]
                want = ms(v)
                assert r[j] == (f"**{want}**" if means[r[0]] == best else want), (metric, rate, r[0])
    diff_rows = table_rows(section(md, "### Paired difference"))
    assert [r[0] for r in diff_rows[1:]] == ["ls", "kd", "filter_kd"]
    assert all(c.endswith("(n=3)") for r in diff_rows[1:] for c in r[1:])


def test_report_plots_exist_are_pngs_and_not_blank(written, folder):
    _, md = written
    plots = sorted((folder / "plots").glob("*.png"))
    names = {p.name for p in plots}
    expected = {"accuracy_vs_noise.png", "search_ls.png", "search_kd.png",
                "search_filter_kd.png", "teacher_curves.png", "hypothesis1.png",
                "zigzag_r0.3_s0.png", "recovery_r0.3_s0.png"}
    expected |= {f"{kind}_r{r:g}_s0.png" for kind in ("paths", "difficulty") for r in RATES}
    assert expected <= names, expected - names
    linked = set(re.findall(r"\]\(plots/([^)]+)\)", md))
    assert linked == names
    for p in plots:
        assert p.stat().st_size > 10_000, p.name
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert w >= 400 and h >= 300, (p.name, im.size)
            rgb = np.asarray(im.convert("RGB"))
        assert rgb.std() > 10, p.name
        colours = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) \
            | rgb[..., 2]
        assert len(np.unique(colours)) > 50, p.name


def test_report_analysis_sections(written):
    _, md = written
    zig = table_rows(section(md, "## Learning-path analysis"))
    assert zig[0][:4] == ["teacher", "noise rate", "flipped", "zig-zag AUROC"]
    assert zig[1][0] == "teacher-r0.3-s0" and zig[1][2] == "90"
    assert 0.0 <= float(zig[1][3]) <= 1.0
    assert re.search(r"\| all noise rates \| 40 \| -?\d\.\d{3} \|", md)
    assert "zig-zag score, teacher-r0-s0: skipped, no flipped labels" in md
    assert "could not" not in md


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("plots", "*.md"))
    return dst


def test_report_without_pstar_filter_kd_or_oht_skips_with_reasons(folder, tmp_path):
    """A dataset without p*, with 4 classes, no filter_kd and no oht runs: every plot that
    still applies is drawn, the others are named in report.md with the reason."""
    dst = _copy(folder, tmp_path)
    store = Store(str(dst))
    t = store.read_table("trials")
    t = t[~t.method.isin(["filter_kd", "oht"])].assign(label_dist_pstar=np.nan)
    store.write_table("trials", t)
    rng = np.random.default_rng(0)
    for row in store.read_table("teachers").itertuples():
        e, n, _ = store.read_array(row.path_file).shape
        logits = np.cumsum(rng.normal(0, 0.8, (e, n, 4)), axis=0)
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        y = rng.integers(0, 4, n)
        store.write_array(row.path_file, p.astype(np.float16))
        store.write_npz(row.labels_file, y=y, y_noisy=np.where(rng.random(n) < row.noise_rate,
                                                               (y + 1) % 4, y))
    summary = report.write_summary(str(dst))
    assert "No `oht` runs: no paired differences." in summary
    md = report.write_report(str(dst))
    names = {p.name for p in (dst / "plots").glob("*.png")}
    assert {"paths_r0_s0.png", "paths_r0.3_s0.png", "zigzag_r0.3_s0.png"} <= names
    assert not any(n.startswith(("difficulty_", "hypothesis1", "search_filter_kd")) for n in names)
    assert "Figure-2 analogue, teacher-r0.3-s0: skipped, p* unknown for this dataset" in md
    assert "Hypothesis 1: skipped, p* unknown for this dataset" in md
    assert "Not available: p* unknown for this dataset." in md
    with Image.open(dst / "plots" / "paths_r0.3_s0.png") as im:
        assert im.size[0] >= 400 and im.size[1] >= 300


# --- bad input ------------------------------------------------------------------------------

def _manifest(dst, **changes):
    m = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**m, **changes}))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("random", "not a filterkd-ray sweep output"),
    ("running", "still running"),
    ("schema0", "written with results schema 0"),
    ("bad_json", "manifest.json: not valid JSON"),
    ("bad_parquet", "trials.parquet: not a readable Parquet table"),
    ("no_trials", "no trials.parquet yet"),
])
def test_bad_folders_raise_input_error_and_write_nothing(folder, tmp_path, case, message):
    dst = tmp_path / "x"
    if case == "random":
        dst.mkdir()
        (dst / "notes.txt").write_text("hello")
    elif case != "missing":
        dst = _copy(folder, tmp_path)
        if case == "running":
            _manifest(dst, status="running")
        elif case == "schema0":
            _manifest(dst, schema_version=0)
        elif case == "bad_json":
            (dst / "manifest.json").write_text("{not json")
        elif case == "bad_parquet":
            (dst / "trials.parquet").write_bytes(b"PAR1 garbage")
        elif case == "no_trials":
            (dst / "trials.parquet").unlink()
    with pytest.raises(InputError, match=re.escape(message)) as err:
        report.write_report(str(dst))
    assert "\n" not in str(err.value)
    assert not (dst / "report.md").exists() and not (dst / "plots").exists()
    if case != "running":   # the summary is a progress view: it accepts a running sweep
        with pytest.raises(InputError, match=re.escape(message)):
            report.write_summary(str(dst))


def test_summary_of_a_running_sweep(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    _manifest(dst, status="running")
    text = report.write_summary(str(dst))
    assert "status `running`" in text and (dst / "summary.md").read_text() == text
