"""The main job end to end: `filterkd-ray sweep` on a real embedded local Ray, read back with
pyarrow; and an interrupted sweep resumed with --resume."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE = str(Path(__file__).resolve().parents[1] / "sweeps" / "toy_smoke.yaml")
REQUIRED = ["trial_id", "stage", "method", "dataset", "noise_kind", "noise_rate", "seed", "ema_rate",
            "temperature", "distill_weight", "ls_epsilon", "snapshot", "val_acc", "test_acc",
            "test_acc_last", "test_nll", "test_ece", "label_dist_pstar", "label_recovery", "status",
            "wall_s", "node_id", "config", "package_version", "git_commit"]


def sweep_cmd(out, *extra):
    return [sys.executable, "-m", "filterkd_ray.cli", "sweep", SMOKE, "--output", str(out), *extra]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "toy_smoke"
    proc = subprocess.run(sweep_cmd(out), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_trials_table(smoke):
    out, _ = smoke
    trials = pq.read_table(out / "trials.parquet").to_pandas()
    assert set(REQUIRED) <= set(trials.columns)
    assert set(trials.status) <= {"ok", "failed", "stopped"}
    assert trials.trial_id.is_unique
    repro = trials[trials.stage == "reproduce"]
    for method in ["oht", "ls", "kd", "eskd", "filter_kd"]:
        for rate in [0.0, 0.3]:
            seeds = set(repro[(repro.method == method) & (repro.noise_rate == rate)].seed)
            assert seeds == {0, 1}, (method, rate, seeds)
    fkd = trials[(trials.stage == "search") & (trials.method == "filter_kd")]
    assert len(fkd) == 2 * 3   # num_samples per noise rate
    for col in ["ema_rate", "temperature", "distill_weight"]:
        assert fkd[col].nunique() > 1, col
    teachers = trials[trials.stage == "teacher"]
    assert sorted(zip(teachers.noise_rate, teachers.seed)) == [(0.0, 0), (0.0, 1), (0.3, 0), (0.3, 1)]
    assert (trials.git_commit.str.len() > 0).all() and (trials.package_version == "0.1.0").all()
    # Selection uses validation only: test_acc is the test accuracy at the best-val epoch.
    epochs = pq.read_table(out / "epochs.parquet").to_pandas()
    for _, row in trials[trials.status == "ok"].head(5).iterrows():
        hist = epochs[epochs.trial_id == row.trial_id].sort_values("epoch")
        best = hist.iloc[int(row.best_epoch)]
        assert best.val_acc == hist.val_acc.max()
        assert np.isclose(best.test_acc, row.test_acc)


def test_teacher_artefacts(smoke):
    out, _ = smoke
    teachers = pq.read_table(out / "teachers.parquet").to_pandas()
    assert len(teachers) == 4
    for _, t in teachers.iterrows():
        path = np.load(out / t.path_file)
        assert path.dtype == np.float16 and path.shape == (4, 300, 3)
        assert np.allclose(path.astype(np.float32).sum(-1), 1.0, atol=1e-2)
        labels = np.load(out / t.labels_file)
        flipped = (labels["y"] != labels["y_noisy"]).mean()
        assert flipped == pytest.approx(t.noise_rate, abs=1e-9)   # `symmetric`: exact count


def test_summary_and_report(smoke):
    out, proc = smoke
    summary = (out / "summary.md").read_text()
    for method in ["oht", "ls", "kd", "eskd", "filter_kd"]:
        assert f"| {method} |" in summary
    assert "search-r0.3-filter_kd" in proc.stdout     # progress lines on the terminal
    assert (out / "report.md").exists() and len(list((out / "plots").glob("*.png"))) >= 3


def test_existing_output_is_refused(smoke):
    out, _ = smoke
    proc = subprocess.run(sweep_cmd(out), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def run_files(out: Path) -> dict[str, float]:
    runs = out / "runs"
    return {p.name: p.stat().st_mtime_ns for p in runs.glob("*.parquet")} if runs.exists() else {}


def test_resume_after_the_driver_is_killed(tmp_path):
    out = tmp_path / "resumed"
    extra = ["--set", "seeds=[0]", "--set", "search.num_samples=3"]
    proc = subprocess.Popen(sweep_cmd(out, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:   # kill once a few search trials have finished
        if sum(n.startswith("search-") and not n.endswith(".epochs.parquet")
               for n in run_files(out)) >= 4:
            break
        assert proc.poll() is None, "sweep ended before it could be interrupted"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)   # the driver and everything it started
    proc.wait()
    before = run_files(out)
    assert not (out / "trials.parquet").exists()
    resumed = subprocess.run(sweep_cmd(out, *extra, "--resume"), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = run_files(out)
    # Finished runs were not re-run: their files are untouched.
    assert all(after[name] == mtime for name, mtime in before.items())
    trials = pq.read_table(out / "trials.parquet").to_pandas()
    assert trials.trial_id.is_unique
    search = trials[trials.stage == "search"]
    counts = search.groupby(["noise_rate", "method"]).size().to_dict()
    for rate in [0.0, 0.3]:
        for method in ["ls", "kd", "eskd", "filter_kd"]:
            assert counts[(rate, method)] == 3
        assert counts[(rate, "oht")] == 1
    assert len(trials[trials.stage == "teacher"]) == 2
    assert len(trials[trials.stage == "reproduce"]) == 10
    assert "already done" in resumed.stdout


def test_diverging_trials_are_failed_rows_and_the_sweep_goes_on(tmp_path):
    import optuna
    out = tmp_path / "nan"
    extra = ["--set", "seeds=[0]", "--set", "data.noise.rates=[0.3]", "--set", "methods=[oht,filter_kd]",
             "--set", "search.num_samples=2", "--set", "search.space={}", "--set", "student.lr=1e12"]
    # A relative --output, resolved against the caller's directory (Tune runs each trial in
    # a working directory of its own).
    proc = subprocess.run(sweep_cmd("nan", *extra), capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pandas()
    students = trials[trials.stage != "teacher"]
    assert len(students) == 3 and (students.status == "failed").all()
    assert students.error.str.contains("loss became").all()
    assert (trials[trials.stage == "teacher"].status == "ok").all()
    # Optuna saw a finite penalty, never NaN, and no trial is left RUNNING.
    storage = f"sqlite:///{out}/optuna/search-r0.3-filter_kd.db"
    study = optuna.load_study(study_name="search-r0.3-filter_kd", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(np.isfinite(t.value) for t in study.trials)


def test_asha_stops_trials_within_each_search(tmp_path):
    out = tmp_path / "asha"
    extra = ["--set", "seeds=[0]", "--set", "data.noise.rates=[0.3]", "--set", "methods=[ls,filter_kd]",
             "--set", "search.space={}", "--set", "search.num_samples=6", "--set", "search.scheduler=asha",
             "--set", "student.epochs=4", "--set", "reproduce=false"]
    proc = subprocess.run(sweep_cmd(out, *extra), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pandas()
    search = trials[trials.stage == "search"]
    assert search.trial_id.is_unique and len(search) == 12
    assert "stopped" in set(search.status), search.status.value_counts()
    stopped = search[search.status == "stopped"]
    epochs = pq.read_table(out / "epochs.parquet").to_pandas()
    for tid in stopped.trial_id:   # stopped early: fewer than all epochs, history kept
        n = (epochs.trial_id == tid).sum()
        assert 1 <= n < 4, (tid, n)
