"""The Ray Train / Tune job layer (`jobs.py`, driven through `Sweep.grid`) on a real local Ray.

One Ray per module (4 logical CPUs, 300 MB object store). The jobs are the toy problem from
`sweeps/toy_smoke.yaml`, resized so the learning path (epochs x samples x classes, float16)
is 2.4 MB: big enough to see in the object store, small enough to train in seconds.

Ray's state API needs the dashboard, which this install does not have, so worker pids come
from the GCS actor table and memory from /proc (see ray_fixtures.py).

Every new Ray worker process imports torch, Ray Train and this package (5 s of CPU, 20 s on
two overloaded cores), so the module runs only two Tune stages:
- one grid of four 1-worker trials, two at a time: two Filter-KD students of a teacher
  trained in this process (the way `filterkd-ray run` does) and put into the object store by
  `Sweep.put_teachers`, as the sweep driver does; then the same teacher job twice;
- one 2-worker TorchTrainer teacher (gloo) with a worker SIGKILLed after its first
  checkpoint. It serves two claims: Train restarts the group from the checkpoint, and the
  finished path matches the 1-worker run. Resuming is exact (engine.py seeds each epoch on
  its own), so this is the stronger form of "both launchers agree".
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from filterkd_ray import InputError, cli
from filterkd_ray.experiment import epoch_rows, load_clean, noisy, run_teacher, teacher_id
from filterkd_ray.jobs import check_resources, write_run, write_teacher_artefacts
from filterkd_ray.spec import load_spec
from filterkd_ray.sweep import Sweep, run_sweep
from ray_fixtures import alive_actor_pids, object_store_bytes, object_store_rss, ray_fixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "toy_smoke.yaml"
EPOCHS, N_TRAIN, CLASSES = 30, 1000, 40
PATH_BYTES = EPOCHS * N_TRAIN * CLASSES * 2          # float16
TOY = [f"data.options.n_train={N_TRAIN}", f"data.options.num_classes={CLASSES}",
       "data.options.n_val=300", "data.options.n_test=1000", "data.noise.rates=[0.2]",
       "seeds=[0]", f"teacher.epochs={EPOCHS}", "student.epochs=20",
       "scaling.checkpoint_every=2", "search.max_concurrent=2"]
RATE, SEED = 0.2, 0
TEACHER = teacher_id(RATE, SEED)     # the name the sweep driver gives this teacher
STUDENTS = ["fkd-0", "fkd-1"]
FILTER_KD = {"ema_rate": 0.3, "temperature": 1.0, "distill_weight": 1.0, "snapshot": "last"}

ray_local = ray_fixture(num_cpus=4, env={
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",        # notice a killed worker quickly
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",   # worker start-up is slow on busy cores
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",        # one actor fewer to start; no preemption here
})


def make_sweep(folder, *overrides) -> tuple[Sweep, dict]:
    spec = load_spec(SMOKE, [*TOY, *overrides])
    sweep = Sweep(spec, str(folder), log=lambda *a: None)
    return sweep, {**sweep.context, "data_ref": ray.put(load_clean(spec))}


def teacher_job(run_id: str) -> dict:
    return {"run_id": run_id, "kind": "teacher", "stage": "teacher", "noise_rate": RATE,
            "seed": SEED}


def run_row(sweep: Sweep, run_id: str):
    return sweep.store.read_table(f"runs/{run_id}").iloc[0]


def path_of(sweep: Sweep, run_id: str) -> np.ndarray:
    return np.asarray(sweep.store.read_array(f"paths/{run_id}.npy"))


def assert_complete_path(path: np.ndarray) -> None:
    """Every sample recorded once per epoch: every row a probability vector, none left zero."""
    assert path.shape == (EPOCHS, N_TRAIN, CLASSES) and path.dtype == np.float16
    p = path.astype(np.float32)
    assert np.isfinite(p).all() and (p >= 0).all()
    sums = p.sum(-1)
    assert (sums > 0).all(), f"{int((sums == 0).sum())} zero rows: samples never recorded"
    # float16 has 11 significant bits: 40 entries round to within ~1e-3 of the true sum 1.
    assert np.abs(sums - 1).max() < 5e-3


def tune_reported_epochs(sweep: Sweep) -> list[int]:
    """The epochs the trial reported to Tune, in order, from its result.json."""
    files = glob.glob(sweep.store.path("tune/*/trial_fn_*/result.json"))
    assert len(files) == 1, files
    return [json.loads(line)["epoch"] for line in Path(files[0]).read_text().splitlines() if line]


# --- probes running beside a Tune stage -----------------------------------------------------

class StorePoller(threading.Thread):
    """Samples, while students run: the object store's allocated bytes, and for each live
    Tune trial process the bytes of the store it has mapped and touched."""

    def __init__(self, store, run_ids):
        super().__init__(daemon=True)
        self.store, self.run_ids, self.stop = store, run_ids, threading.Event()
        self.max_store = 0
        self.both_reading = None      # {pid: store bytes} at a moment both trials held the path

    def run(self) -> None:
        while not self.stop.is_set():
            self.max_store = max(self.max_store, object_store_bytes())
            pids = alive_actor_pids("ImplicitFunc")
            mapped = {pid: object_store_rss(pid) for pid in pids}
            readers = {pid: b for pid, b in mapped.items() if b >= PATH_BYTES}
            # Both trials have read the whole path, and neither has finished (a finished
            # student writes its row file last).
            finished = any(self.store.exists(f"runs/{r}.parquet") for r in self.run_ids)
            if len(readers) >= 2 and not finished and self.both_reading is None:
                self.both_reading = readers
            time.sleep(0.05)


class WorkerKiller(threading.Thread):
    """SIGKILLs one Train worker once Train has registered a checkpoint of `run_dir`."""

    def __init__(self, run_dir: str, timeout: float = 600):
        super().__init__(daemon=True)
        self.snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
        self.timeout, self.stop = timeout, threading.Event()
        self.killed_pid = self.checkpoint_epoch = None
        self.workers: list[int] = []

    def run(self) -> None:
        t0 = time.time()
        while not self.stop.is_set() and time.time() - t0 < self.timeout:
            epoch = self._latest_checkpoint_epoch()
            pids = alive_actor_pids("RayTrainWorker") if epoch is not None else []
            if len(pids) == 2:
                self.workers, self.checkpoint_epoch = pids, epoch
                os.kill(pids[-1], signal.SIGKILL)
                self.killed_pid = pids[-1]
                return
            time.sleep(0.05)

    def _latest_checkpoint_epoch(self):
        try:
            snap = json.loads(self.snapshot.read_text())
        except (FileNotFoundError, json.JSONDecodeError):   # not yet, or being written
            return None
        latest = snap.get("latest_checkpoint_result")
        return None if latest is None else latest["metrics"]["epoch"]


# --- fixtures: each Tune stage runs once per module -----------------------------------------

@pytest.fixture(scope="module")
def one_worker(ray_local, tmp_path_factory):
    """One grid of four 1-worker trials (in-trial launcher): two students sharing the path of
    a teacher trained in this process, then the teacher job twice with the same seeds."""
    sweep, base = make_sweep(tmp_path_factory.mktemp("w1"))
    spec = sweep.spec
    data = noisy(spec, load_clean(spec), RATE, SEED)
    result, row = run_teacher(spec, data, RATE, SEED, "cpu")
    write_teacher_artefacts(sweep.store, TEACHER, data, result)
    write_run(sweep.store, TEACHER, row, epoch_rows(TEACHER, row, result.history))
    refs = sweep.put_teachers([TEACHER], spec.teacher.model)   # path and weights, once, driver-owned
    students = [{"run_id": r, "kind": "student", "stage": "search", "noise_rate": RATE,
                 "seed": SEED, "method": "filter_kd", "hparams": FILTER_KD} for r in STUDENTS]
    before = object_store_bytes()
    poller = StorePoller(sweep.store, STUDENTS)
    poller.start()
    try:
        # Two at a time, students first so they surely run together; the teacher trials
        # then reuse their actors (a fresh process costs more than a toy job).
        sweep.grid("toy", [*students, teacher_job("trial-a"), teacher_job("trial-b")],
                   {**base, "teacher_refs_by_id": refs})
    finally:
        poller.stop.set()
        poller.join()
    return sweep, poller, before


@pytest.fixture(scope="module")
def two_workers_killed(ray_local, tmp_path_factory):
    """The same teacher as a 2-worker TorchTrainer (gloo), one worker killed mid-run."""
    sweep, base = make_sweep(tmp_path_factory.mktemp("w2"), "scaling.num_workers=2",
                             "scaling.max_failures=2")
    killer = WorkerKiller(sweep.store.path("ray_train/w2"))
    killer.start()
    try:
        sweep.grid("teachers", [teacher_job("w2")], base)
    finally:
        killer.stop.set()
        killer.join()
    return sweep, killer


# --- 1 and 3: both launchers, and a worker killed mid-run ----------------------------------

def test_two_worker_teacher_has_complete_path_and_matches_one_worker(one_worker,
                                                                     two_workers_killed):
    sweep1 = one_worker[0]
    sweep2, _ = two_workers_killed
    r1, r2 = run_row(sweep1, "trial-a"), run_row(sweep2, "w2")
    assert r1.status == "ok" and r2.status == "ok", (r1.error, r2.error)
    p1, p2 = path_of(sweep1, "trial-a"), path_of(sweep2, "w2")
    assert_complete_path(p1)
    assert_complete_path(p2)
    # Tolerance: two standard errors of a test accuracy measured on n_test samples, i.e.
    # the resolution of the test set itself. DDP should do better than that: each rank takes
    # every other sample of the 1-worker batch and gradients are averaged, so both runs make
    # the same updates up to floating-point summation order.
    n_test = 1000
    tol = 2 * math.sqrt(r1.test_acc * (1 - r1.test_acc) / n_test)
    assert abs(r1.test_acc - r2.test_acc) <= tol, (r1.test_acc, r2.test_acc, tol)
    assert abs(r1.val_acc - r2.val_acc) <= 2 * math.sqrt(r1.val_acc * (1 - r1.val_acc) / 300)
    diff = np.abs(p1.astype(np.float32) - p2.astype(np.float32))
    assert diff.mean() < 1e-2, f"paths differ by {diff.mean():.4f} on average"
    assert r2.epochs_run == EPOCHS and r1.epochs_run == EPOCHS


def test_killed_worker_resumes_from_checkpoint(two_workers_killed):
    sweep, killer = two_workers_killed
    assert killer.killed_pid is not None, "no worker was killed: no checkpoint seen in time"
    row = run_row(sweep, "w2")
    assert row.status == "ok", row.error
    resumed = int(row.attempts_resumed_at)
    # Train restarted the group from the checkpoint registered before the kill (or a later one).
    assert killer.checkpoint_epoch <= resumed < EPOCHS - 1, (killer.checkpoint_epoch, resumed)
    # The stored history: every epoch exactly once, in order.
    epochs = sweep.store.read_table("runs/w2.epochs").epoch.tolist()
    assert epochs == list(range(EPOCHS))
    # What the trial reported to Tune, across both attempts: epochs up to the checkpoint were
    # reported once (never recomputed); the second attempt starts right after the checkpoint;
    # only the epochs between the checkpoint and the kill were run twice.
    reported = tune_reported_epochs(sweep)
    first_attempt = len(reported) - (EPOCHS - resumed - 1)
    assert first_attempt >= resumed + 1, reported
    assert reported == list(range(first_attempt)) + list(range(resumed + 1, EPOCHS)), reported
    for e in range(resumed + 1):
        assert reported.count(e) == 1, (e, reported)
    assert_complete_path(path_of(sweep, "w2"))


# --- 4: determinism ------------------------------------------------------------------------

def test_same_teacher_job_twice_gives_the_same_path(one_worker):
    sweep = one_worker[0]
    a, b = path_of(sweep, "trial-a"), path_of(sweep, "trial-b")
    assert np.array_equal(a, b)
    ra, rb = run_row(sweep, "trial-a"), run_row(sweep, "trial-b")
    assert (ra.test_acc, ra.val_acc, ra.best_epoch) == (rb.test_acc, rb.val_acc, rb.best_epoch)
    # ... and the same as the job run outside Ray, in this process.
    assert np.array_equal(a, path_of(sweep, TEACHER))


# --- 2: two students share one path object -------------------------------------------------

def test_two_student_trials_share_one_path_object(one_worker):
    sweep, poller, before = one_worker
    assert before >= PATH_BYTES                       # the path is in the store, once
    rows = [run_row(sweep, r) for r in STUDENTS]
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    # Each worker's array was a read-only view of the store (job_body reads flags.writeable).
    assert all(bool(r.path_zero_copy) for r in rows)
    # Both trials held the whole path at the same moment, as pages of the shared store ...
    assert poller.both_reading is not None, "never saw both students holding the path at once"
    # ... while the store grew by much less than a second copy.
    grew = poller.max_store - before
    assert grew < PATH_BYTES / 2, f"object store grew {grew} B while a path is {PATH_BYTES} B"


# --- 5: bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["scaling.num_workers=8"],
     r"8 workers and their Train driver need CPU=8.1 but the cluster has 4 \(CPU=4\)"),
    # 4 workers x 1 CPU fit 4 CPUs, but not beside the trial's Train driver (0.1 CPU).
    (["scaling.num_workers=4"], r"4 workers and their Train driver need CPU=4.1 but the cluster has 4"),
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=1"],
     r"one worker needs GPU=1 but no node offers that much \(largest node: 0; cluster: CPU=4\)"),
    (["scaling.cpus_per_worker=6"], r"one worker needs CPU=6 .*largest node: 4"),
])
def test_more_than_the_cluster_can_offer_is_an_input_error(ray_local, overrides, message):
    with pytest.raises(InputError, match=message):
        check_resources(load_spec(SMOKE, overrides))


def test_unplaceable_sweep_fails_before_submitting_anything(ray_local, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="scaling: 8 workers and their Train driver need CPU=8.1"):
        run_sweep(load_spec(SMOKE, ["scaling.num_workers=8"]), str(out), log=lambda *a: None)
    assert not (out / "tune").exists() and not (out / "runs").exists()


def test_unusable_output_folder_is_an_input_error(ray_local, tmp_path, capsys):
    spec = load_spec(SMOKE)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub"):     # a file, and a folder that cannot exist under one
        with pytest.raises(InputError,
                           match=re.escape(f"--output {out}: cannot write a sweep folder there")):
            run_sweep(spec, str(out), log=lambda *a: None)
    assert afile.read_text() == "not a folder"
    # The CLI: exit 2 and one line on stderr.
    assert cli.main(["sweep", str(SMOKE), "--output", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {afile / 'sub'}: cannot write") and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_an_input_error(ray_local, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(InputError, match="--output .*: cannot write a sweep folder there"):
        run_sweep(load_spec(SMOKE), str(ro / "sweep"), log=lambda *a: None)
