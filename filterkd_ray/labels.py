"""Supervision targets, one registry entry per method, and the Filter-KD filter.

A method turns the teacher's outputs (its learning path, its last and best-validation
networks) into a `Target`: a function from a training batch to target log-probabilities,
plus the full target table used to measure label quality. Hyperparameters each method
reads are listed in `Method.params`; the sweep's search space is checked against them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from filterkd_ray import InputError
from filterkd_ray.losses import tempered

SNAPSHOTS = ("best", "last")
# Used by `filterkd-ray run` when a hyperparameter is not given (0.05: the paper code's EMA rate).
DEFAULT_HPARAMS = {"ls_epsilon": 0.1, "temperature": 1.0, "distill_weight": 1.0,
                   "ema_rate": 0.05, "snapshot": "best"}


def filter_path(path, ema_rate: float, upto: int | None = None) -> np.ndarray:
    """Filter-KD table: q_1 = p_1, q_t = (1 - a) q_{t-1} + a p_t for epochs 1..upto.

    `path` is [E, N, K] (any float dtype, e.g. float16 from the object store, read-only is
    fine); `upto` counts epochs (1-based, inclusive; None = all). Returns float32 [N, K].
    The loop is over epochs only, each step one vectorised update of the whole table.
    """
    check_ema_rate(ema_rate)
    path = np.asarray(path)
    if path.ndim != 3:
        raise InputError(f"path: need shape [epochs, N, K]; got {path.shape}")
    upto = path.shape[0] if upto is None else upto
    if not 1 <= upto <= path.shape[0]:
        raise InputError(f"upto: {upto} is outside [1, {path.shape[0]}] (epochs recorded)")
    q = path[0].astype(np.float32)
    for t in range(1, upto):
        q *= 1.0 - ema_rate
        q += ema_rate * path[t].astype(np.float32)
    return q


def filtered_table(path, ema_rate: float, upto: int | None = None) -> np.ndarray:
    """Filter-KD's table from a path in any mode: a dense [E, N, K] array, or one of
    pathmodes' compact forms (a bank of tables, a top-k path), which filter themselves."""
    if hasattr(path, "filtered"):
        return path.filtered(ema_rate, upto)
    return filter_path(path, ema_rate, upto)


def check_ema_rate(a: float) -> None:
    if not 0.0 < a <= 1.0:
        raise InputError(f"ema_rate: {a} is outside (0, 1]")


@dataclasses.dataclass
class TeacherOutputs:
    """What a trained teacher hands its students (all optional but the path's shape)."""
    path: object = None                        # [E, N, K] float16 train-mode predictions, or
                                               # a pathmodes.BankTables / TopkPath
    best_epoch: int | None = None              # 0-based best-validation epoch
    last_model: torch.nn.Module | None = None  # KD teacher
    best_model: torch.nn.Module | None = None  # ESKD teacher


@dataclasses.dataclass
class Target:
    """`batch(idx, x) -> log-probabilities [B, K]` (or None for plain CE), its loss weighting,
    and `table` [N, K]: the tempered target on every training sample (for label quality).

    Methods whose targets come from the student's own predictions (PS-KD, self-adaptive
    training, ELR, temporal ensembling) also use the optional hooks the engine calls:
    start_epoch(epoch) before an epoch; observe(idx, logits, epoch) with each training
    batch's detached logits, before the optimiser step; regularizer(logits, idx) -> a
    scalar added to the loss.
    """
    batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
    table: np.ndarray
    temperature: float = 1.0
    weight: float = 0.0
    start_epoch: Callable[[int], None] | None = None
    observe: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None
    regularizer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclasses.dataclass
class Method:
    name: str
    params: tuple[str, ...]          # hyperparameters the method reads
    needs_teacher: bool
    build: Callable[..., Target]     # build(hp, y_noisy, num_classes, teacher, train_x, device)


METHODS: dict[str, Method] = {}


def register_method(name: str, params: tuple[str, ...], needs_teacher: bool):
    def wrap(fn):
        METHODS[name] = Method(name, params, needs_teacher, fn)
        return fn
    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"method: unknown {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def check_hparams(hp: dict) -> None:
    if "temperature" in hp and not hp["temperature"] > 0:
        raise InputError(f"temperature: {hp['temperature']} must be > 0")
    if "distill_weight" in hp and not 0.0 <= hp["distill_weight"] <= 1.0:
        raise InputError(f"distill_weight: {hp['distill_weight']} is outside [0, 1]")
    if "ls_epsilon" in hp and not 0.0 <= hp["ls_epsilon"] < 1.0:
        raise InputError(f"ls_epsilon: {hp['ls_epsilon']} is outside [0, 1)")
    if "ema_rate" in hp:
        check_ema_rate(hp["ema_rate"])
    if "snapshot" in hp and hp["snapshot"] not in SNAPSHOTS:
        raise InputError(f"snapshot: {hp['snapshot']!r}; choose one of {list(SNAPSHOTS)}")


def table_target(table: np.ndarray, temperature: float, weight: float, device) -> Target:
    """A per-sample table looked up by sample index (never by batch position)."""
    logq = torch.from_numpy(np.log(np.clip(table, 1e-12, None))).to(device)
    shown = tempered(logq, temperature).cpu().numpy()
    return Target(batch=lambda idx, x: logq[idx], table=shown, temperature=temperature,
                  weight=weight)


@register_method("oht", params=(), needs_teacher=False)
def _oht(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    table = np.eye(num_classes, dtype=np.float32)[y_noisy]
    return Target(batch=lambda idx, x: None, table=table)


@register_method("ls", params=("ls_epsilon",), needs_teacher=False)
def _ls(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    eps = hp["ls_epsilon"]
    table = (1 - eps) * np.eye(num_classes, dtype=np.float32)[y_noisy] + eps / num_classes
    return table_target(table, 1.0, 1.0, device)   # w = 1, T = 1: CE against the smoothed label


def network_target(model: torch.nn.Module, hp, train_x, device) -> Target:
    """KD/ESKD: the teacher network in eval mode on the student's (augmented) batch."""
    model = model.to(device).eval()

    @torch.no_grad()
    def batch(idx, x):
        return F.log_softmax(model(x).float(), dim=-1)

    table = predict_table(model, train_x, device)
    return Target(batch=batch, table=tempered(torch.from_numpy(np.log(np.clip(table, 1e-12, None))),
                                              hp["temperature"]).numpy(),
                  temperature=hp["temperature"], weight=hp["distill_weight"])


@torch.no_grad()
def predict_table(model: torch.nn.Module, x: torch.Tensor, device, batch_size: int = 1024):
    """Eval-mode softmax of `model` on prepared (normalised, un-augmented) inputs `x`."""
    model.eval()
    out = [torch.softmax(model(x[i:i + batch_size].to(device)).float(), -1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


@register_method("kd", params=("temperature", "distill_weight"), needs_teacher=True)
def _kd(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    return network_target(teacher.last_model, hp, train_x, device)


@register_method("eskd", params=("temperature", "distill_weight"), needs_teacher=True)
def _eskd(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    return network_target(teacher.best_model, hp, train_x, device)


@register_method("filter_kd", params=("ema_rate", "temperature", "distill_weight", "snapshot"),
                 needs_teacher=True)
def _filter_kd(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    upto = teacher.best_epoch + 1 if hp["snapshot"] == "best" else None
    table = filtered_table(teacher.path, hp["ema_rate"], upto)
    return table_target(table, hp["temperature"], hp["distill_weight"], device)


def build_target(method: str, hp: dict, y_noisy: np.ndarray, num_classes: int,
                 teacher: TeacherOutputs | None, train_x: torch.Tensor | None, device) -> Target:
    m = get_method(method)
    missing = [p for p in m.params if p not in hp]
    if missing:
        raise InputError(f"method {method}: missing hyperparameters {missing}")
    check_hparams(hp)
    if m.needs_teacher and teacher is None:
        raise InputError(f"method {method}: needs a teacher")
    return m.build(hp, y_noisy, num_classes, teacher, train_x, device)
from filterkd_ray import family as _family  # noqa: E402,F401  (registers the prediction-memory family)
