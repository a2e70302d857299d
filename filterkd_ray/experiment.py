"""The units of work: one teacher run, one student run. Pure PyTorch, no Ray.

`jobs.py` runs these inside Ray Tune trials or Ray Train workers; `filterkd-ray run` calls
them in one process. Each returns the finished `FitResult` plus the result-table row.
"""
from __future__ import annotations

import functools
import json
import socket
import time

import torch

from filterkd_ray.data import Dataset, load_dataset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.engine import FitResult, Seeds, fit, load_model, to_device
from filterkd_ray.labels import METHODS, TeacherOutputs, build_target
from filterkd_ray.metrics import label_quality
from filterkd_ray.pathmodes import make_recorder
from filterkd_ray.results import provenance

HPARAMS = ("ema_rate", "temperature", "distill_weight", "ls_epsilon", "snapshot",
           "pskd_alpha", "start_epoch", "elr_lambda")


@functools.lru_cache(maxsize=2)
def _load_clean(name: str, options_json: str) -> Dataset:
    return load_dataset(name, **json.loads(options_json))


def load_clean(spec) -> Dataset:
    """The spec's dataset with clean labels (cached per process: decoding happens once)."""
    return _load_clean(spec.data.name, json.dumps(spec.data.options, sort_keys=True))


def noisy(spec, clean: Dataset, noise_rate: float, seed: int) -> Dataset:
    """Same spec + seed + rate = same noisy labels, bit for bit (noise has its own seed)."""
    noise = spec.data.noise
    return apply_noise(clean, noise_rate, noise.kind, Seeds.from_base(seed).noise, noise.matrix,
                       path=noise.path, key=noise.key)


def teacher_id(noise_rate: float, seed: int) -> str:
    return f"teacher-r{noise_rate:g}-s{seed}"


def path_recorder(spec, data: Dataset, epochs: int):
    """What a run that teaches keeps of its learning path (spec.path.mode)."""
    p = spec.path
    return make_recorder(p.mode, epochs, len(data.train), data.num_classes, p.bank_rates, p.topk)


def device_for(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def base_row(spec, stage: str, method: str, noise_rate: float, seed: int) -> dict:
    s = Seeds.from_base(seed)
    return {"stage": stage, "method": method, "dataset": spec.data.name,
            "noise_kind": spec.data.noise.kind, "noise_rate": float(noise_rate), "seed": seed,
            "noise_seed": s.noise, "init_seed": s.init, "order_seed": s.order,
            "augment_seed": s.augment, "spec_name": spec.name, "node_id": node_id(),
            **provenance()}


def node_id() -> str:
    try:
        import ray
        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray the host name identifies the node
        pass
    return socket.gethostname()


def result_row(base: dict, fit_result: FitResult | None, t0: float, **extra) -> dict:
    row = {**base, **extra, "wall_s": time.perf_counter() - t0}
    if fit_result is not None:
        row.update(fit_result.summary())
    return row


def run_teacher(spec, data: Dataset, noise_rate: float, seed: int, device, on_epoch=None,
                resume=None) -> tuple[FitResult, dict]:
    t0 = time.perf_counter()
    result = fit(to_device(data, device), spec.teacher, Seeds.from_base(seed),
                 record_path=path_recorder(spec, data, spec.teacher.epochs),
                 device=device, on_epoch=on_epoch, resume=resume)
    row = result_row(base_row(spec, "teacher", "teacher", noise_rate, seed), result, t0,
                     status="ok", generation=0, config=json.dumps(spec.teacher.model_dump()))
    return result, row


def teacher_outputs(spec, data: Dataset, path, best_state, last_state, best_epoch,
                    device, model: str | None = None) -> TeacherOutputs:
    """Rebuild what a student needs from a teacher's stored artefacts. `model`: the
    teacher's architecture (spec.teacher.model; spec.student.model for a born-again one)."""
    mk = lambda st: None if st is None else load_model(  # noqa: E731
        model or spec.teacher.model, st, data.num_classes, data.input_shape, device)
    return TeacherOutputs(path=path, best_epoch=int(best_epoch), last_model=mk(last_state),
                          best_model=mk(best_state))


def run_student(spec, data: Dataset, noise_rate: float, seed: int, method: str, hp: dict,
                teacher: TeacherOutputs | None, device, stage: str = "search",
                on_epoch=None, resume=None, teacher_run: str | None = None,
                generation: int = 1, record_path: bool = False) -> tuple[FitResult, dict]:
    """Train a student with `method`'s targets; the row carries the label quality of its table.

    teacher_run: the run `teacher` came from (default: the (rate, seed) teacher); a student
    that will teach the next born-again generation records its path (`record_path`)."""
    t0 = time.perf_counter()
    hp = {k: hp[k] for k in METHODS[method].params}
    dev_data = to_device(data, device)
    train_x = dev_data.prepare(dev_data.train_x)
    target = build_target(method, hp, data.train.labels, data.num_classes, teacher, train_x, device)
    recorder = path_recorder(spec, data, spec.student.epochs) if record_path else False
    result = fit(dev_data, spec.student, Seeds.from_base(seed), target=target,
                 loss_scale=spec.loss_scale, record_path=recorder, device=device,
                 on_epoch=on_epoch, resume=resume)
    # After fit: a fixed table is unchanged by training; a prediction memory (family.py)
    # is measured as it ends.
    quality = label_quality(target.table, data.train.y, data.train.labels, data.train.p_star)
    config = {"student": spec.student.model_dump(), "hparams": hp, "loss_scale": spec.loss_scale}
    row = result_row(base_row(spec, stage, method, noise_rate, seed), result, t0, status="ok",
                     config=json.dumps(config), generation=generation,
                     teacher_id=teacher_run or teacher_id(noise_rate, seed),
                     **{k: hp.get(k) for k in HPARAMS}, **quality)
    return result, row


def epoch_rows(run_id: str, row: dict, history: list[dict]) -> list[dict]:
    keys = {k: row[k] for k in ("stage", "method", "noise_rate", "seed")}
    return [{"trial_id": run_id, **keys, **h} for h in history]
