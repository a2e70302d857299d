"""Ways to keep what Filter-KD needs from a learning path without storing the dense path
(`path.mode` in the spec; README "Path modes" says which fits which dataset size).

The dense path is [epochs, N, K] float16: fine for CIFAR (45k x 200 x 10 x 2 B = 180 MB),
impossible for ImageNet-1k (1.28M x 90 epochs x 1000 classes x 2 B ~ 230 GB). Two modes:

(a) Bank (`FilterBank`, `BankRecorder`, `BankTables`): the filtered tables themselves, for a
    fixed grid of EMA rates, updated online while the teacher trains: len(grid) x N x K
    float32 (ImageNet, 8 rates: 41 GB; the "best"-epoch copy doubles it), independent of
    the number of epochs. Fed the same predictions in the same epochs, each table equals
    `labels.filter_path(path, a)`; incoming rows are rounded to float16 first, exactly as
    the dense path stores them, so the equality is exact, not approximate. The price: the
    search can only pick EMA rates from the grid.

(b) Top-k sparse path (`topk_path`, `TopkRecorder`, `TopkPath`): per sample and epoch, the k
    largest probabilities (float16) and their classes (int16), the remaining mass spread
    uniformly over the other K - k classes when the row is rebuilt: epochs x N x k x 4 B
    (ImageNet, k = 5: 2.3 GB). Any EMA rate can still be filtered afterwards
    (`filter_topk`), with an error that shrinks as k grows and vanishes at k = K (per row,
    the L1 reconstruction error is non-increasing in k: moving the largest tail entry out
    of the tail lowers the tail's mean absolute deviation).

`engine.fit(record_path=make_recorder(mode, ...))` records any of the three; students read
the result through `labels.filtered_table`. `benchmarks/path_modes.py` measures memory,
recording time and error of each against the dense filter.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from filterkd_ray import InputError
from filterkd_ray.labels import check_ema_rate

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
        if len(idx) == len(self.seen) and bool(self.seen.all()) \
                and bool(torch.bincount(idx, minlength=len(idx)).eq(1).all()):
            # A whole epoch of seen samples (what the engine's recorder passes): put the rows
            # in index order once, then update each table in place, with no gather/scatter.
            # The same two float32 roundings as below, so the result is bit for bit the same.
            rows = torch.empty_like(p)
            rows[idx] = p
            for j, a in enumerate(self.grid):
                self.tables[j].mul_(1.0 - a).add_(rows * a)
            return
        first = self.seen[idx]
        for j, a in enumerate(self.grid):
            q = self.tables[j, idx]
            # The same two float32 operations as filter_path, so results agree bit for bit.
            upd = q * (1.0 - a) + a * p
            self.tables[j, idx] = torch.where(first[:, None], upd, p)
        self.seen[idx] = True

    def table(self, ema_rate: float) -> np.ndarray:
        """The [N, K] float32 table of one grid rate."""
        j = grid_index(self.grid, ema_rate)
        if j is None:
            raise InputError(f"ema_rate: {ema_rate} is not in the bank's grid {self.grid}")
        return self.tables[j].cpu().numpy()

    def snapshot(self) -> torch.Tensor:
        """A copy of all tables (e.g. at a new best-validation epoch, for snapshot 'best')."""
        return self.tables.clone()

    @property
    def nbytes(self) -> int:
        return self.tables.element_size() * self.tables.nelement()


def grid_index(grid, ema_rate: float) -> int | None:
    """The position of `ema_rate` in a bank's grid (None if the bank does not keep it)."""
    hits = np.flatnonzero(np.abs(np.asarray(grid) - ema_rate) <= 1e-12)
    return int(hits[0]) if len(hits) else None


# --------------------------------------------------------------------------- top-k path

def check_topk(k: int, num_classes: int, name: str) -> None:
    if not 1 <= k <= num_classes:
        raise InputError(f"{name}: {k} is outside [1, {num_classes}] (the classes)")
    if num_classes > np.iinfo(INDEX_DTYPE).max:
        raise InputError(f"{name}: {num_classes} classes exceed {INDEX_DTYPE.__name__}")


def topk_rows(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 probabilities [..., K] -> (k largest, float16; their classes, int16)."""
    vals, cls = torch.topk(probs.float(), k, dim=-1)
    return vals.half(), cls.to(torch.int16)


def topk_path(path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense [E, N, K] -> (values [E, N, k] float16, classes [E, N, k] int16), largest first."""
    path = np.asarray(path)
    if path.ndim != 3:
        raise InputError(f"path: need shape [epochs, N, K]; got {path.shape}")
    check_topk(k, path.shape[-1], "k")
    vals, cls = topk_rows(torch.from_numpy(np.ascontiguousarray(path, dtype=np.float16)), k)
    return vals.numpy(), cls.numpy()


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


# --------------------------------------------------------------------------- recorders
# engine.fit hands each epoch's complete, index-keyed predictions (float16, on the CPU,
# gathered over DDP ranks, the drop_last tail included) to one of these. Each keeps what its
# mode stores, checkpoints it for an exact resume, and returns what students read.

PATH_MODES = ("dense", "bank", "topk")


class DenseRecorder:
    """The whole path, [E, N, K] float16 (the paper's learning path)."""

    def __init__(self, epochs: int, n: int, num_classes: int):
        self.path = torch.zeros((epochs, n, num_classes), dtype=torch.float16)

    def record(self, epoch: int, idx: torch.Tensor, probs: torch.Tensor) -> None:
        self.path[epoch, idx] = probs

    def mark_best(self, epoch: int) -> None:
        pass   # any epoch can be filtered up to later

    def state_dict(self, epoch: int) -> dict:
        return {"path": self.path[: epoch + 1].clone()}

    def load_state_dict(self, state: dict, start: int) -> None:
        self.path[:start] = torch.as_tensor(state["path"][:start])

    def result(self) -> np.ndarray:
        return self.path.numpy()


class BankRecorder:
    """`FilterBank` tables for a grid of EMA rates, plus a copy at the best-validation epoch
    (for `snapshot: best`): 2 x len(grid) x N x K float32, whatever the number of epochs."""

    def __init__(self, epochs: int, n: int, num_classes: int, grid):
        self.bank = FilterBank(n, num_classes, grid)
        self.best, self.best_epoch, self.epochs = None, -1, 0

    def record(self, epoch: int, idx: torch.Tensor, probs: torch.Tensor) -> None:
        self.bank.update(idx, probs)
        self.epochs = epoch + 1

    def mark_best(self, epoch: int) -> None:
        self.best, self.best_epoch = self.bank.snapshot(), epoch

    def state_dict(self, epoch: int) -> dict:
        return {"tables": self.bank.tables.clone(), "seen": self.bank.seen.clone(),
                "best": None if self.best is None else self.best.clone(),
                "best_epoch": self.best_epoch, "epochs": self.epochs}

    def load_state_dict(self, state: dict, start: int) -> None:
        self.bank.tables.copy_(state["tables"])
        self.bank.seen.copy_(state["seen"])
        self.best, self.best_epoch, self.epochs = state["best"], state["best_epoch"], state["epochs"]

    def result(self) -> "BankTables":
        best = self.bank.tables if self.best is None else self.best
        return BankTables(grid=np.asarray(self.bank.grid), last=self.bank.tables.numpy(),
                          best=best.numpy(), best_epoch=self.best_epoch, epochs=self.epochs)


class TopkRecorder:
    """The k largest probabilities (float16) and their classes (int16) per sample and epoch."""

    def __init__(self, epochs: int, n: int, num_classes: int, k: int):
        check_topk(k, num_classes, "path.topk")
        self.num_classes = num_classes
        self.values = torch.zeros((epochs, n, k), dtype=torch.float16)
        self.classes = torch.zeros((epochs, n, k), dtype=torch.int16)

    def record(self, epoch: int, idx: torch.Tensor, probs: torch.Tensor) -> None:
        # topk_rows, as topk_path on the dense float16 path: both agree exactly.
        self.values[epoch, idx], self.classes[epoch, idx] = topk_rows(probs, self.values.shape[-1])

    def mark_best(self, epoch: int) -> None:
        pass

    def state_dict(self, epoch: int) -> dict:
        return {"values": self.values[: epoch + 1].clone(),
                "classes": self.classes[: epoch + 1].clone()}

    def load_state_dict(self, state: dict, start: int) -> None:
        self.values[:start] = torch.as_tensor(state["values"][:start])
        self.classes[:start] = torch.as_tensor(state["classes"][:start])

    def result(self) -> "TopkPath":
        return TopkPath(values=self.values.numpy(), classes=self.classes.numpy(),
                        num_classes=self.num_classes)


def make_recorder(mode: str, epochs: int, n: int, num_classes: int, bank_rates=(),
                  topk: int = 5):
    if mode == "dense":
        return DenseRecorder(epochs, n, num_classes)
    if mode == "bank":
        return BankRecorder(epochs, n, num_classes, bank_rates)
    if mode == "topk":
        return TopkRecorder(epochs, n, num_classes, topk)
    raise InputError(f"path.mode: unknown {mode!r}; choose one of {list(PATH_MODES)}")


# --------------------------------------------------------------------------- what students read
# A dense path is a plain [E, N, K] ndarray; the other modes are these two. All of them answer
# `labels.filtered_table(path, ema_rate, upto)`, are put in the object store once, and read zero-copy.

@dataclasses.dataclass
class BankTables:
    grid: np.ndarray            # [G] EMA rates
    last: np.ndarray            # [G, N, K] float32: filtered over every epoch
    best: np.ndarray            # [G, N, K] float32: filtered up to the best-validation epoch
    best_epoch: int             # 0-based
    epochs: int                 # epochs recorded
    mode = "bank"

    def filtered(self, ema_rate: float, upto: int | None = None) -> np.ndarray:
        j = grid_index(self.grid, ema_rate)
        if j is None:
            raise InputError(f"ema_rate: {ema_rate} is not in path.bank_rates "
                             f"{self.grid.tolist()}; a bank only holds those rates")
        if upto is None or upto == self.epochs:
            return self.last[j]
        if upto == self.best_epoch + 1:
            return self.best[j]
        raise InputError(f"upto: a bank keeps the tables after epoch {self.best_epoch + 1} "
                         f"(best) and {self.epochs} (last) only; got {upto}")

    def arrays(self) -> dict:
        return {"grid": self.grid, "last": self.last, "best": self.best,
                "best_epoch": np.int64(self.best_epoch), "epochs": np.int64(self.epochs)}


@dataclasses.dataclass
class TopkPath:
    values: np.ndarray          # [E, N, k] float16
    classes: np.ndarray         # [E, N, k] int16
    num_classes: int
    mode = "topk"

    def filtered(self, ema_rate: float, upto: int | None = None) -> np.ndarray:
        return filter_topk(self.values, self.classes, self.num_classes, ema_rate, upto)

    def dense(self) -> np.ndarray:
        """The rebuilt [E, N, K] float16 path (for the report's learning-path plots)."""
        return np.stack([dense_row(v, c, self.num_classes).astype(np.float16)
                         for v, c in zip(self.values, self.classes)])

    def arrays(self) -> dict:
        return {"values": self.values, "classes": self.classes,
                "num_classes": np.int64(self.num_classes)}


def read_only(path) -> bool:
    """True when every array of `path` is a read-only view (e.g. zero-copy from Ray's store)."""
    arrays = path.arrays().values() if hasattr(path, "arrays") else [path]
    return all(not a.flags.writeable for a in arrays if isinstance(a, np.ndarray) and a.ndim)


def path_file(run_id: str, mode: str) -> str:
    """Where a run's path lives in the sweep folder, by mode."""
    return f"paths/{run_id}.npy" if mode == "dense" else f"paths/{run_id}.{mode}.npz"


def write_path(store, run_id: str, path) -> str:
    """Atomic write of a path in any mode; returns its file name."""
    mode = getattr(path, "mode", "dense")
    name = path_file(run_id, mode)
    if mode == "dense":
        store.write_array(name, path)
    else:
        store.write_npz(name, **path.arrays())
    return name


def read_path(store, name: str):
    """The path written by `write_path` (a dense one memory-mapped where the store is local)."""
    if name.endswith(".npy"):
        return store.read_array(name)
    if not name.endswith((".bank.npz", ".topk.npz")):
        raise InputError(f"{name}: not a learning-path file (.npy, .bank.npz, .topk.npz)")
    z = store.read_npz(name)
    if name.endswith(".bank.npz"):
        return BankTables(grid=z["grid"], last=z["last"], best=z["best"],
                          best_epoch=int(z["best_epoch"]), epochs=int(z["epochs"]))
    return TopkPath(values=z["values"], classes=z["classes"], num_classes=int(z["num_classes"]))
