"""THE training loop: pure PyTorch, no Ray. Teachers, students, tests and benchmarks all
call `fit`. It is DDP-aware: when torch.distributed is initialised (Ray Train's
`TorchTrainer` does that), each rank trains on its shard and the learning path is gathered
so that every rank holds the complete path, each sample exactly once per epoch.

Determinism: the model is built under `seeds.init`; epoch e's data order comes from a
generator seeded (seeds.order, e) and its augmentation from (seeds.augment, e). Nothing
carries RNG state across epochs, so a run resumed from a checkpoint replays exactly the
epochs it would have run, and turning path recording on changes no training result.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from filterkd_ray.data import Dataset
from filterkd_ray.data.augment import augment
from filterkd_ray.labels import Target
from filterkd_ray.losses import distill_loss
from filterkd_ray.metrics import classification_metrics
from filterkd_ray.models import create_model
from filterkd_ray.pathmodes import DenseRecorder

EVAL_BATCH = 2048


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed."""


@dataclasses.dataclass(frozen=True)
class Seeds:
    noise: int
    init: int
    order: int
    augment: int

    @classmethod
    def from_base(cls, base: int) -> "Seeds":
        """Four independent streams from one recorded base seed."""
        s = np.random.SeedSequence(base).generate_state(4)
        return cls(*(int(v) for v in s))


def _generator(seed: int, epoch: int, stream: int, device) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


@dataclasses.dataclass
class DeviceData:
    """Training tensors on the training device. Images stay uint8 until a batch is taken."""
    train_x: torch.Tensor
    train_y: torch.Tensor       # the labels training sees (noisy)
    val_x: torch.Tensor
    val_y: torch.Tensor         # noisy too: selection sees what training sees
    test_x: torch.Tensor
    test_y: torch.Tensor        # clean, reported only
    num_classes: int
    augment: str = "none"
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def prepare(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images -> normalised float (augmented when a generator is given)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if gen is not None:
                x = augment(x, self.augment, gen)
            x = (x - self.mean) / self.std
            if x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def to_device(ds: Dataset, device) -> DeviceData:
    """Copy a Dataset's arrays to `device`. On CPU the tensors share memory with the arrays,
    read-only object-store views included: the engine only ever reads its data tensors."""
    def t(a):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(np.ascontiguousarray(a)).to(device)
    stats = lambda v: None if v is None else torch.tensor(v, device=device).view(1, -1, 1, 1)  # noqa: E731
    return DeviceData(train_x=t(ds.train.x), train_y=t(ds.train.labels), val_x=t(ds.val.x),
                      val_y=t(ds.val.labels), test_x=t(ds.test.x), test_y=t(ds.test.y),
                      num_classes=ds.num_classes, augment=ds.augment, mean=stats(ds.mean),
                      std=stats(ds.std))


def lr_factor(cfg, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` of `total`."""
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    # onecycle: linear warm-up then linear decay to zero
    w = cfg.warmup_fraction
    return t / w if t < w else max(0.0, (1 - t) / (1 - w))


@dataclasses.dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_state: dict
    last_state: dict
    path: object | None         # [E, N, K] float16 ndarray, or pathmodes.BankTables/TopkPath

    def summary(self) -> dict[str, float]:
        """Headline numbers: at the best-validation epoch, and `*_last` at the last epoch."""
        best, last = self.history[self.best_epoch], self.history[-1]
        out = {"best_epoch": self.best_epoch, "epochs_run": len(self.history)}
        for k in ("val_acc", "val_nll", "val_ece", "test_acc", "test_nll", "test_ece"):
            out[k], out[f"{k}_last"] = best[k], last[k]
        return out


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(model, data: DeviceData, x: torch.Tensor, amp: bool) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), EVAL_BATCH):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            out.append(torch.softmax(model(data.prepare(x[i:i + EVAL_BATCH])).float(), -1))
    return torch.cat(out)


def evaluate(model, data: DeviceData, amp: bool = False) -> dict[str, float]:
    m = classification_metrics(predict(model, data, data.val_x, amp), data.val_y, "val")
    m.update(classification_metrics(predict(model, data, data.test_x, amp), data.test_y, "test"))
    return m


def _state_cpu(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _set_bn_momentum(model, momenta) -> list:
    """Set every BatchNorm's momentum (one value, or a list from an earlier call); return the old.

    Restoring also puts back each BN's `num_batches_tracked`, which a train-mode forward
    increments even at momentum 0 (it is in the state dict and drives momentum=None BNs)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    old = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
           for m in bns]
    for m, mom in zip(bns, momenta if isinstance(momenta, list) else [(momenta, None)] * len(bns)):
        m.momentum = mom[0]
        if mom[1] is not None:
            m.num_batches_tracked.copy_(mom[1])
    return old


def fit(data: DeviceData, cfg, seeds: Seeds, *, target: Target | None = None,
        loss_scale: float = 1.0, record_path=False, device="cpu",
        on_epoch: Callable[[int, dict, Callable[[], dict]], None] | None = None,
        resume: dict | None = None) -> FitResult:
    """Train `cfg.model` on `data` and return its history, best/last weights and path.

    target: per-sample supervision (None = one-hot CE on the noisy labels).
    record_path: True = the dense learning path; or a recorder from `pathmodes.make_recorder`
      (a bank of filtered tables, a top-k path). FitResult.path is what it returns.
    on_epoch(epoch, metrics, make_checkpoint): called after every epoch on every rank;
      make_checkpoint() builds a resumable state dict (call it only when you save one).
    resume: a state dict from make_checkpoint(); training continues after its epoch.
    """
    device = torch.device(device)
    rank, world = _world()
    torch.manual_seed(seeds.init)
    model = create_model(cfg.model, data.num_classes, data.input_shape).to(device)
    if device.type == "cuda" and len(data.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    amp = device.type == "cuda" and cfg.precision == "bf16"
    n, k = len(data.train_y), data.num_classes
    per_rank_batch = max(1, cfg.batch_size // world)
    shard_len = math.ceil(n / world)
    steps_per_epoch = shard_len // per_rank_batch if cfg.drop_last \
        else math.ceil(shard_len / per_rank_batch)
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, total_steps, steps_per_epoch))
    recorder = DenseRecorder(cfg.epochs, n, k) if record_path is True else (record_path or None)
    record_path = recorder is not None
    history, best_epoch, best_score, best_state, start = [], -1, -math.inf, None, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history, best_epoch, best_state = resume["history"], resume["best_epoch"], resume["best_state"]
        best_score, start = resume["best_score"], resume["epoch"] + 1
        if record_path:
            recorder.load_state_dict(resume["path"], start)
        if target is not None and resume.get("target") is not None:
            target.load_state_dict(resume["target"])   # a per-sample memory (family.py)
    if target is not None and hasattr(target, "set_total_epochs"):
        target.set_total_epochs(cfg.epochs)   # schedules over the whole run (PS-KD's a_t)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=_generator(seeds.order, epoch, 0, "cpu"))
        # Pad so every rank gets the same number of positions (DDP needs equal step counts);
        # padded positions are trained on but never recorded twice.
        padded = torch.cat([order, order[: shard_len * world - n]])
        shard = padded[rank::world].to(device)
        recorded = (torch.arange(len(padded))[rank::world] < n).to(device)
        aug_gen = _generator(seeds.augment, epoch, 0, device)
        if target is not None and target.start_epoch is not None:
            target.start_epoch(epoch)
        probs_buf = torch.zeros((shard_len, k), device=device) if record_path else None
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            pos = slice(step * per_rank_batch, (step + 1) * per_rank_batch)
            idx = shard[pos]
            x = data.prepare(data.train_x[idx], aug_gen)
            y = data.train_y[idx]
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                logits = train_model(x)
                tgt = target.batch(idx, x) if target is not None else None
            logits = logits.float()
            if record_path:
                # The train-mode prediction on the augmented view, before this step's update.
                probs_buf[pos] = torch.softmax(logits.detach(), -1)
            loss = distill_loss(logits, y, tgt, target.temperature if target else 1.0,
                                target.weight if target else 0.0, loss_scale)
            if target is not None and target.regularizer is not None:
                loss = loss + target.regularizer(logits, idx)
            if target is not None and target.observe is not None:
                target.observe(idx, logits.detach(), epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        seen = min(steps_per_epoch * per_rank_batch, shard_len)
        if record_path and seen < shard_len:
            # drop_last: the tail skipped by training is still forwarded, in train mode but
            # with BN running stats frozen and its own augmentation stream, so every sample
            # gets a path entry and training itself is untouched.
            old = _set_bn_momentum(model, 0.0)
            # A train-mode BatchNorm cannot normalise one sample (BatchNorm1d raises): a
            # one-sample tail is forwarded with the sample before it, whose output is dropped.
            lo = seen - 1 if shard_len - seen == 1 and old and seen > 0 else seen
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                x_tail = data.prepare(data.train_x[shard[lo:]],
                                      _generator(seeds.augment, epoch, 1, device))
                probs_buf[seen:] = torch.softmax(model(x_tail).float(), -1)[seen - lo:]
            _set_bn_momentum(model, old)
        if record_path:
            recorder.record(epoch, *_gather_path_row(shard, recorded, probs_buf, world))
        train_loss = (loss_sum / max(seen, 1)).item()
        if not math.isfinite(train_loss):
            raise Diverged(f"loss became {train_loss} in epoch {epoch}")
        metrics = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": train_loss, "train_acc_aug": correct.item() / max(seen, 1),
                   **evaluate(model, data, amp)}
        score = metrics[cfg.select_metric] * (-1 if cfg.select_metric.endswith("nll") else 1)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, _state_cpu(model)
            if record_path:
                recorder.mark_best(epoch)
        metrics["best_epoch"] = best_epoch
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append(metrics)
        if on_epoch is not None:
            def make_checkpoint(epoch=epoch):
                # deepcopy: optimizer.state_dict() aliases the live momentum buffers, so a
                # checkpoint kept in memory would otherwise change as training goes on.
                return {"epoch": epoch, "model": _state_cpu(model),
                        "optimizer": copy.deepcopy(optimizer.state_dict()),
                        "scheduler": scheduler.state_dict(),
                        "history": list(history), "best_epoch": best_epoch,
                        "best_state": best_state, "best_score": best_score,
                        "path": recorder.state_dict(epoch) if record_path else None,
                        "target": target.state_dict() if hasattr(target, "state_dict") else None}
            on_epoch(epoch, metrics, make_checkpoint)
    return FitResult(history=history, best_epoch=best_epoch, best_state=best_state,
                     last_state=_state_cpu(model),
                     path=recorder.result() if record_path else None)


def _gather_path_row(shard, recorded, probs_buf, world) -> tuple[torch.Tensor, torch.Tensor]:
    """This epoch's (sample indices, float16 predictions) on the CPU, from every rank."""
    idx, probs = shard[recorded], probs_buf[recorded]
    if world > 1:
        # Every rank holds shard_len positions; gather them all (padding marked -1).
        full_idx = torch.where(recorded, shard, torch.full_like(shard, -1))
        idxs = [torch.empty_like(full_idx) for _ in range(world)]
        bufs = [torch.empty_like(probs_buf) for _ in range(world)]
        dist.all_gather(idxs, full_idx)
        dist.all_gather(bufs, probs_buf)
        idx, probs = torch.cat(idxs), torch.cat(bufs)
        keep = idx >= 0
        idx, probs = idx[keep], probs[keep]
    return idx.cpu(), probs.to("cpu", torch.float16)


def load_model(cfg_model: str, state: dict, num_classes: int, input_shape, device="cpu"):
    """Rebuild a network from a state dict (e.g. a teacher checkpoint)."""
    model = create_model(cfg_model, num_classes, input_shape)
    model.load_state_dict(state)
    return model.to(device).eval()
