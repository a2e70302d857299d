"""Born-again generations and a bank path in a real sweep (embedded local Ray), read back with
pyarrow: generation g + 1 distils from its own generation-g student, the bank's tables reach
students zero-copy, the search picks EMA rates from the bank's grid, and the report has a
per-generation table. The same sweep reports to Tune every 3 epochs (scaling.report_every)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from filterkd_ray.pathmodes import BankTables, read_path
from filterkd_ray.results import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE = str(Path(__file__).resolve().parents[1] / "sweeps" / "toy_smoke.yaml")
GRID = [0.1, 0.5]


@pytest.fixture(scope="module")
def born_again(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "born_again"
    sets = ["path.mode=bank", f"path.bank_rates={GRID}", "generations=3",
            "data.noise.rates=[0.3]", "methods=[oht,filter_kd]", "search.space={}",
            "search.num_samples=3", "student.epochs=4", "teacher.epochs=3",
            "scaling.report_every=3"]
    cmd = [sys.executable, "-m", "filterkd_ray.cli", "sweep", SMOKE, "--output", str(out)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, pq.read_table(out / "trials.parquet").to_pandas()


def test_each_generation_distils_from_the_previous_one(born_again):
    out, trials = born_again
    assert (trials.status == "ok").all()
    rep = trials[trials.stage == "reproduce"]
    fk = rep[rep.method == "filter_kd"]
    # Seeds 0 and 1, generations 1..3; oht has no teacher, so one generation.
    assert sorted(zip(fk.seed, fk.generation)) == [(s, g) for s in (0, 1) for g in (1, 2, 3)]
    assert sorted(rep[rep.method == "oht"].generation) == [1, 1]
    for r in fk.itertuples():
        want = f"teacher-r0.3-s{r.seed}" if r.generation == 1 else \
            f"repro-r0.3-filter_kd-s{r.seed}" + ("" if r.generation == 2 else "-g2")
        assert r.teacher_id == want
    # Same hyperparameters in every generation (those of the search's best trial).
    assert fk.groupby("seed").ema_rate.nunique().eq(1).all()
    assert set(trials[trials.stage == "teacher"].generation) == {0}
    # Generations that teach wrote their bank and weights; the last one did not.
    store = Store(str(out))
    for g, teaches in ((1, True), (2, True), (3, False)):
        rid = "repro-r0.3-filter_kd-s0" + ("" if g == 1 else f"-g{g}")
        assert store.exists(f"paths/{rid}.bank.npz") == teaches
        assert store.exists(f"teachers/{rid}/best.pt") == teaches
    # A later generation trains on a different table than the one before it.
    g1, g2 = (fk[(fk.seed == 0) & (fk.generation == g)].iloc[0] for g in (1, 2))
    assert g1.label_dist_pstar != g2.label_dist_pstar


def test_bank_mode_end_to_end(born_again):
    out, trials = born_again
    search = trials[(trials.stage == "search") & (trials.method == "filter_kd")]
    assert len(search) == 3 and set(search.ema_rate) <= set(GRID)
    students = trials[trials.method == "filter_kd"]
    assert students.path_zero_copy.astype(bool).all()
    teachers = pq.read_table(out / "teachers.parquet").to_pandas()
    for f in teachers.path_file:
        assert f.endswith(".bank.npz")
        bank = read_path(Store(str(out)), f)
        assert isinstance(bank, BankTables) and bank.grid.tolist() == GRID
        assert bank.last.shape == (2, 300, 3) and bank.epochs == 3
        np.testing.assert_allclose(bank.last.sum(-1), 1.0, atol=2e-3)
    assert not (out / "paths" / "teacher-r0.3-s0.npy").exists()   # no dense path kept


def test_report_has_the_generation_table(born_again):
    out, _ = born_again
    report = (out / "report.md").read_text()
    assert "## Born-again generations" in report
    rows = [line for line in report.splitlines() if line.startswith("| 0.3 | filter_kd | ")
            and line.count("|") == 9]
    assert [r.split("|")[3].strip() for r in rows] == ["1", "2", "3"]
    assert "(n=2)" in rows[1] and "(n=2)" in rows[2]
    assert "path.mode 'bank' keeps filtered tables" in report   # path plots skipped, said why
    assert "## Born-again generations" in (out / "summary.md").read_text()


def test_a_failed_student_teaches_no_next_generation(tmp_path):
    """One line of generations ends at a failed student; the others go on (no Ray needed)."""
    from filterkd_ray.jobs import write_run
    from filterkd_ray.spec import load_spec
    from filterkd_ray.sweep import Sweep
    logs = []
    sweep = Sweep(load_spec(SMOKE, ["generations=3"]), str(tmp_path / "s"), log=logs.append)
    sweep.store.makedirs()
    for seed, status in ((0, "ok"), (1, "failed")):
        write_run(sweep.store, f"repro-r0.3-kd-s{seed}", {"stage": "reproduce", "status": status}, [])
    hp = {"temperature": 2.0, "distill_weight": 0.5}
    jobs = [sweep.generation_job(0.3, "kd", s, hp, 2) for s in (0, 1)]
    assert [j["teacher_id"] for j in jobs] == ["repro-r0.3-kd-s0", "repro-r0.3-kd-s1"]
    assert all(j["teaches"] for j in jobs)                         # generation 2 of 3 teaches
    assert not sweep.generation_job(0.3, "kd", 0, hp, 3)["teaches"]   # the last does not
    kept = sweep.taught_by_ok_runs(jobs, "generation-2")
    assert [j["run_id"] for j in kept] == ["repro-r0.3-kd-s0-g2"]
    assert logs == ["[generation-2] skipping repro-r0.3-kd-s1-g2: its teacher repro-r0.3-kd-s1 "
                    "did not finish ok"]


def test_reports_to_tune_every_k_epochs(born_again):
    """report_every=3, checkpoint_every=2 (toy_smoke), 4 student epochs: Tune sees epochs
    2, 3, 4 (1-based: checkpoint, report, checkpoint + last), the run's own table all 4."""
    out, trials = born_again
    files = sorted(out.glob("tune/search-*/trial_fn_*/result.json"))
    assert len(files) == 4          # oht once, filter_kd 3 trials
    for f in files:
        epochs = [json.loads(line)["epoch"] for line in f.read_text().splitlines() if line]
        assert epochs == [1, 2, 3], f
    runs = pq.read_table(out / "epochs.parquet").to_pandas()
    search = runs[runs.stage == "search"]
    assert search.groupby("trial_id").epoch.apply(list).map(lambda e: e == [0, 1, 2, 3]).all()
