"""Ray Train / Tune wrappers around the units in `experiment.py`.

A job is one teacher or one student run. Its config (a small dict: spec, kind, noise rate,
seed, method, hyperparameters, ObjectRefs) is the same whichever way it runs:

- `scaling.num_workers == 1`: `engine.fit` runs directly inside the Tune trial (a Ray Train
  `TorchTrainer` would add ~10 s of start-up per trial on a small machine, see DESIGN.md);
  fault tolerance through Tune's FailureConfig and `tune.get_checkpoint()`.
- `scaling.num_workers > 1`: the trial builds a `TorchTrainer` (DDP: gloo on CPU, NCCL on
  GPU) whose workers run the same `job_body`; `TuneReportCallback` forwards rank-0 metrics,
  and Train's FailureConfig restarts the group from its last checkpoint.

Large arrays (the dataset, teacher paths and weights) arrive as ObjectRefs and are read
with `ray.get`: a read-only, zero-copy view of the node's single copy.
"""
from __future__ import annotations

import io
import math
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.tune
import torch

from filterkd_ray import InputError
from filterkd_ray.cluster import LAUNCHER_CONFIG, launcher_node_types, workers_unplaceable
from filterkd_ray.engine import Diverged
from filterkd_ray.experiment import (base_row, device_for, epoch_rows, noisy,
                                     run_student, run_teacher, teacher_id, teacher_outputs)
from filterkd_ray.labels import METHODS
from filterkd_ray.pathmodes import read_only, write_path
from filterkd_ray.results import EPOCH_COLUMNS, TRIAL_COLUMNS, Store, frame
from filterkd_ray.spec import Spec

STATE_FILE = "state.pt"


class Reporter:
    """Reports metrics and checkpoints to Tune (in-trial) or Train (DDP worker)."""

    def __init__(self, in_train: bool):
        self.in_train = in_train
        self.api = ray.train if in_train else ray.tune

    @property
    def rank(self) -> int:
        return ray.train.get_context().get_world_rank() if self.in_train else 0

    def resume_state(self) -> dict | None:
        ckpt = self.api.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, weights_only=True)

    def report(self, metrics: dict, state: dict | None = None) -> None:
        if state is None or self.rank != 0:
            self.api.report(metrics)   # Train: every rank reports, same number of times
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            self.api.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def objective_value(metrics: dict, metric: str) -> float:
    """Optuna must never see NaN/inf: a diverged trial reports a finite penalty."""
    v = metrics.get(metric, math.nan)
    if v is None or not math.isfinite(v):
        return 0.0 if metric.endswith("acc") else 1e6
    return float(v)


def job_body(config: dict, reporter: Reporter) -> None:
    """Run one job end to end; rank 0 writes its row (and a teacher's artefacts)."""
    spec = Spec.model_validate(config["spec"])
    store = Store(config["store"])
    run_id, kind = config["run_id"], config["kind"]
    rate, seed = config["noise_rate"], config["seed"]
    data = noisy(spec, ray.get(config["data_ref"]), rate, seed)
    device = device_for(spec.scaling.use_gpu)
    metric = spec.search.metric
    epochs = (spec.teacher if kind == "teacher" else spec.student).epochs
    every = spec.scaling.checkpoint_every

    def on_epoch(epoch, metrics, make_checkpoint):
        # Every rank takes the same decisions: Train needs the same number of reports from each.
        due = (epoch + 1) % every == 0 or epoch + 1 == epochs
        if due or (epoch + 1) % spec.scaling.report_every == 0:
            reporter.report({**metrics, "objective": objective_value(metrics, metric)},
                            make_checkpoint() if due else None)

    t0 = time.perf_counter()
    resume = reporter.resume_state()
    try:
        if kind == "teacher":
            result, row = run_teacher(spec, data, rate, seed, device, on_epoch, resume)
        else:
            refs = config.get("teacher_refs")
            teacher = None
            if METHODS[config["method"]].needs_teacher:
                teacher = teacher_outputs(spec, data, ray.get(refs["path"]), ray.get(refs["best"]),
                                          ray.get(refs["last"]), refs["best_epoch"], device,
                                          model=refs.get("model"))
            result, row = run_student(spec, data, rate, seed, config["method"], config["hparams"],
                                      teacher, device, stage=config["stage"],
                                      on_epoch=on_epoch, resume=resume,
                                      teacher_run=config.get("teacher_id"),
                                      generation=config.get("generation", 1),
                                      record_path=config.get("teaches", False))
            if teacher is not None:
                row["path_zero_copy"] = read_only(teacher.path)
    except Diverged as err:
        row = {**error_row(spec, config, str(err)), "wall_s": time.perf_counter() - t0}
        if reporter.rank == 0:
            write_run(store, run_id, row, [])
        reporter.report({"objective": objective_value({}, metric), metric: math.nan,
                         "epoch": epochs - 1, "status": "failed"})
        return
    row["attempts_resumed_at"] = -1 if resume is None else int(resume["epoch"])
    if reporter.rank == 0:
        if kind == "teacher" or config.get("teaches"):   # a born-again student teaches next
            write_teacher_artefacts(store, run_id, data, result)
        write_run(store, run_id, row, epoch_rows(run_id, row, result.history))


def write_run(store: Store, run_id: str, row: dict, epochs: list[dict]) -> None:
    """A finished run: its epochs, then its row (the row file marks the run as done)."""
    store.write_table(f"runs/{run_id}.epochs", frame(epochs, EPOCH_COLUMNS))
    store.write_table(f"runs/{run_id}", frame([{"trial_id": run_id, **row}], TRIAL_COLUMNS))


def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_teacher_artefacts(store: Store, tid: str, data, result) -> None:
    write_path(store, tid, result.path)
    store.write_npz(f"paths/{tid}.labels.npz", y=data.train.y, y_noisy=data.train.labels,
                    p_star=data.train.p_star)
    store.write_bytes(f"teachers/{tid}/best.pt", state_bytes(result.best_state))
    store.write_bytes(f"teachers/{tid}/last.pt", state_bytes(result.last_state))


def load_state(store: Store, name: str) -> dict:
    return torch.load(io.BytesIO(store.read_bytes(name)), weights_only=True)


# --- the two launchers --------------------------------------------------------------------

def trial_fn(tune_config: dict, *, context: dict) -> None:
    """A Tune function trainable: one job, in-trial or as a TorchTrainer.

    `context` (bound with functools.partial by the sweep driver) holds what every trial of
    a stage shares: the spec, the store URI and the ObjectRefs. `tune_config` holds what
    varies: the job's identity (grid stages) or the hyperparameters Optuna proposes.
    """
    job = tune_config.get("job", {})
    config = {**context, **job, "hparams": {**job.get("hparams", {}), **tune_config.get("hparams", {})}}
    if "run_id" not in config:
        config["run_id"] = config["run_prefix"] + ray.tune.get_context().get_trial_id()
    if "teacher_refs_by_id" in config:   # each student distils from its own seed's teacher
        config["teacher_refs"] = config.pop("teacher_refs_by_id").get(
            config.get("teacher_id") or teacher_id(config["noise_rate"], config["seed"]))
    spec = Spec.model_validate(config["spec"])
    if spec.scaling.num_workers == 1:
        job_body(config, Reporter(in_train=False))
        return
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    sc = spec.scaling
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker=worker_resources(spec)),
        run_config=ray.train.RunConfig(
            name=config["run_id"],          # deterministic: a retried trial resumes its run
            storage_path=config["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _train_worker(config: dict) -> None:
    job_body(config, Reporter(in_train=True))


def worker_resources(spec: Spec) -> dict:
    sc = spec.scaling
    res = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        res["GPU"] = sc.gpus_per_worker
    return res


def trial_resources(spec: Spec) -> dict:
    """What one Tune trial holds: the worker itself, or a light driver plus its workers."""
    if spec.scaling.num_workers == 1:
        return worker_resources(spec)
    return {"CPU": 0.1}   # the TorchTrainer driver; its workers reserve their own resources


def check_resources(spec: Spec, launcher_config: str = LAUNCHER_CONFIG) -> None:
    """Fail before submission when no node, or the whole cluster, can ever hold one trial."""
    need = worker_resources(spec)
    offered = launcher_node_types(launcher_config)
    if offered is not None:
        # A `ray up` cluster: the autoscaler adds nodes on demand (GPU workers scale from
        # zero), so judge the node types it may launch, not the nodes up right now.
        why = workers_unplaceable(offered, need, spec.scaling.num_workers)
        if why is not None:
            raise InputError(f"scaling: {why}; lower scaling.* or add a node type that offers "
                             f"it to the cluster config ({launcher_config})")
        return
    # A DDP trial also holds its Train driver's CPU while its workers run (0.1 + 4 x 1 CPU
    # never fits a 4-CPU cluster: the trial would wait forever).
    driver = trial_resources(spec) if spec.scaling.num_workers > 1 else {}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    for key, amount in need.items():
        per_node = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if per_node < amount:
            raise InputError(f"scaling: one worker needs {key}={amount:g} but no node offers "
                             f"that much (largest node: {per_node:g}; cluster: "
                             f"{_fmt(total)}); lower scaling.* or add nodes")
        whole = amount * spec.scaling.num_workers + driver.get(key, 0.0)
        if total.get(key, 0.0) < whole:
            who = " and their Train driver" if key in driver else ""
            raise InputError(f"scaling: {spec.scaling.num_workers} workers{who} need {key}={whole:g} "
                             f"but the cluster has {total.get(key, 0.0):g} "
                             f"({_fmt(total)}); lower scaling.num_workers")
    # A worker is one bundle: one node must hold all of it at once. Per-key totals can pass
    # while no node does (CPUs on one node, the GPU stand-in on another): Tune would wait forever.
    fits = sum(min(math.floor(n.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
               for n in nodes)
    if fits < spec.scaling.num_workers:
        raise InputError(f"scaling: one worker needs {_fmt(need)} on a single node; the nodes "
                         f"have room for {fits} of {spec.scaling.num_workers} such workers "
                         f"(nodes: {' | '.join(_fmt(n) for n in nodes)}); lower scaling.* or "
                         "add nodes that offer all of it")


def _fmt(res: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())
                     if not k.startswith(("node:", "memory", "object_store")))


def error_row(spec: Spec, config: dict, err: str) -> dict:
    row = base_row(spec, config["stage"], config.get("method", "teacher"), config["noise_rate"],
                   config["seed"])
    return {**row, **config.get("hparams", {}), "status": "failed", "error": err[-2000:],
            "generation": config.get("generation", 0 if config["kind"] == "teacher" else 1)}
