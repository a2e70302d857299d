"""Ways to keep what Filter-KD needs from a learning path without storing the dense path.

The dense path is [epochs, N, K] float16: fine for CIFAR (50k x 200 x 10 x 2 B = 200 MB),
impossible for ImageNet-1k (1.28M x 90 epochs x 1000 classes x 2 B ~ 230 GB). Two modes:

(a) `FilterBank`: the filtered tables themselves, for a fixed grid of EMA rates, updated
    online while the teacher trains: len(grid) x N x K float32 (ImageNet, 8 rates: 41 GB;
    a "best"-epoch snapshot doubles it), independent of the number of epochs. Fed the same
    predictions in the same epochs, each table equals `labels.filter_path(path, a)`; by
    default incoming rows are rounded to float16 first, exactly as the dense path stores
    them, so the equality is exact, not approximate. `bank_target` plugs it into
    `engine.fit` through the Target `observe` hook (plain CE training, no engine change).
    The price: the search can only pick EMA rates from the grid.

(b) Top-k sparse path: per sample and epoch, the k largest probabilities (float16) and their
    classes (int16), the remaining mass spread uniformly over the other K - k classes when
    the row is rebuilt: epochs x N x k x 4 B (ImageNet, k = 5: 2.3 GB). Any EMA rate can
    still be filtered afterwards (`filter_topk`), with an error that shrinks as k grows and
    vanishes at k = K (per row, the L1 reconstruction error is non-increasing in k: moving
    the largest tail entry out of the tail lowers the tail's mean absolute deviation).

`benchmarks/path_modes.py` measures memory and error of both against the dense filter.
"""
from __future__ import annotations

import numpy as np
import torch

from filterkd_ray import InputError
from filterkd_ray.labels import Target, check_ema_rate

INDEX_DTYPE = np.int16      # class ids up to 32,767 (ImageNet-21k would need int32)


class FilterBank:
    """Online Filter-KD tables for every EMA rate in `grid`: q_1 = p_1 (first visit copies),
    q_t = (1 - a) q_{t-1} + a p_t, one update per visit, keyed by sample index.

    `update(idx, probs)` takes a batch of sample indices and their probabilities (any
    device); the tables live on `device`. `tables[j]` is the [N, K] table for grid[j]."""

    def __init__(self, n: int, num_classes: int, grid, device="cpu",
                 round_like_path: bool = True):
        self.grid = [float(a) for a in grid]
        if not self.grid:
            raise InputError("FilterBank: the grid of EMA rates is empty")
        for a in self.grid:
            check_ema_rate(a)
        self.device = torch.device(device)
        self.round = round_like_path
        self.tables = torch.zeros(len(self.grid), n, num_classes, device=self.device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        idx = idx.to(self.device)
        p = probs.to(self.device)
        p = (p.half() if self.round else p).float()
        first = self.seen[idx]
        for j, a in enumerate(self.grid):
            q = self.tables[j, idx]
            # The same two float32 operations as filter_path, so results agree bit for bit.
            upd = q * (1.0 - a) + a * p
            self.tables[j, idx] = torch.where(first[:, None], upd, p)
        self.seen[idx] = True

    def table(self, ema_rate: float) -> np.ndarray:
        """The [N, K] float32 table of one grid rate."""
        for j, a in enumerate(self.grid):
            if abs(a - ema_rate) <= 1e-12:
                return self.tables[j].cpu().numpy()
        raise InputError(f"ema_rate: {ema_rate} is not in the bank's grid {self.grid}")

    def snapshot(self) -> torch.Tensor:
        """A copy of all tables (e.g. at a new best-validation epoch, for snapshot 'best')."""
        return self.tables.clone()

    @property
    def nbytes(self) -> int:
        return self.tables.element_size() * self.tables.nelement()


def bank_target(bank: FilterBank, num_classes: int) -> Target:
    """A teacher `Target` for engine.fit: plain CE on the noisy labels, and every training
    batch's train-mode softmax (before the step, as the dense path records it) into `bank`.
    Note: with drop_last the tail samples skipped by an epoch are not observed (the dense
    path forwards them separately), so their tables miss that epoch."""

    def observe(idx, logits, epoch):
        bank.update(idx, torch.softmax(logits.float(), -1))

    return Target(batch=lambda idx, x: None, table=np.zeros((0, num_classes), np.float32),
                  observe=observe)


# --------------------------------------------------------------------------- top-k path

def topk_path(path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense [E, N, K] -> (values [E, N, k] float16, classes [E, N, k] int16), largest first."""
    path = np.asarray(path)
    if path.ndim != 3:
        raise InputError(f"path: need shape [epochs, N, K]; got {path.shape}")
    num_classes = path.shape[-1]
    if not 1 <= k <= num_classes:
        raise InputError(f"k: {k} is outside [1, {num_classes}]")
    if num_classes > np.iinfo(INDEX_DTYPE).max:
        raise InputError(f"topk_path: {num_classes} classes exceed {INDEX_DTYPE.__name__}")
    t = torch.from_numpy(np.ascontiguousarray(path, dtype=np.float16)).float()
    vals, cls = torch.topk(t, k, dim=-1)
    return vals.half().numpy(), cls.numpy().astype(INDEX_DTYPE)


def dense_row(values: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """One epoch's [N, k] top-k back to [N, K] float32: the k kept probabilities, and the
    rest of the mass (1 - their sum, floored at 0) spread evenly over the other classes."""
    v = values.astype(np.float32)
    n, k = v.shape
    rest = k < num_classes
    fill = np.clip(1.0 - v.sum(1, keepdims=True), 0.0, None) / max(num_classes - k, 1)
    out = np.repeat(fill if rest else np.zeros((n, 1), np.float32), num_classes, axis=1)
    np.put_along_axis(out, classes.astype(np.int64), v, axis=1)
    return out.astype(np.float32)


def filter_topk(values: np.ndarray, classes: np.ndarray, num_classes: int, ema_rate: float,
                upto: int | None = None) -> np.ndarray:
    """`labels.filter_path` over a top-k path, one rebuilt epoch at a time ([N, K] memory)."""
    check_ema_rate(ema_rate)
    upto = values.shape[0] if upto is None else upto
    if not 1 <= upto <= values.shape[0]:
        raise InputError(f"upto: {upto} is outside [1, {values.shape[0]}] (epochs recorded)")
    q = dense_row(values[0], classes[0], num_classes)
    for t in range(1, upto):
        q *= 1.0 - ema_rate
        q += ema_rate * dense_row(values[t], classes[t], num_classes)
    return q


def topk_nbytes(epochs: int, n: int, k: int) -> int:
    return epochs * n * k * (np.dtype(np.float16).itemsize + np.dtype(INDEX_DTYPE).itemsize)


def dense_nbytes(epochs: int, n: int, num_classes: int) -> int:
    return epochs * n * num_classes * np.dtype(np.float16).itemsize


def bank_nbytes(grid_size: int, n: int, num_classes: int, snapshot: bool = False) -> int:
    return (2 if snapshot else 1) * grid_size * n * num_classes * np.dtype(np.float32).itemsize
