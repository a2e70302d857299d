"""Datasets with a stable per-sample index, and their registry.

Every loader returns a `Dataset` of numpy arrays with *clean* labels; `noise.apply_noise`
adds the noisy train/validation labels. Arrays are what the sweep driver `ray.put`s once.
Sample i of a split is row i of its arrays, forever: paths and tables are keyed by it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from filterkd_ray import InputError


@dataclasses.dataclass
class Split:
    x: np.ndarray                      # float32 [n, d] (vectors) or uint8 [n, C, H, W] (images)
    y: np.ndarray                      # int64 [n], clean labels
    y_noisy: np.ndarray | None = None  # int64 [n], what training sees (None = clean)
    p_star: np.ndarray | None = None   # float32 [n, K], true posterior where known (toy)
    # int64 [n]: each row's index in the loader's source training pool (the order a label
    # file over the original training set is in; see Dataset.source_size). Set by every
    # loader for rows that come from that pool (train, and val when held out of it); None
    # for the test split and an own val/ folder, which no such file labels.
    source_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> np.ndarray:
        """The labels training and selection use: noisy where noise was applied."""
        return self.y if self.y_noisy is None else self.y_noisy

    @property
    def flipped(self) -> np.ndarray:
        return np.zeros(len(self.y), bool) if self.y_noisy is None else self.y_noisy != self.y


@dataclasses.dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    # Images only: per-channel normalisation and the augmentation the engine applies on device.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str = "none"              # "none" | "crop_flip" | "crop_flip_cutout"
    classes: list[str] | None = None
    # Images in the source training pool that Split.source_index points into: the length
    # of a label file "over the original training set" (noise_file.py). None = unknown.
    source_size: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.x.ndim == 4


# name -> loader(**options) -> Dataset (clean labels). Loaders register themselves below.
DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    def wrap(fn):
        DATASETS[name] = fn
        return fn
    return wrap


def load_dataset(name: str, **options) -> Dataset:
    if name not in DATASETS:
        raise InputError(f"data.name: unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](**options)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded hold-out of `fraction` of n samples, each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


from filterkd_ray.data import toy as _toy  # noqa: E402,F401  (registers "toy")
from filterkd_ray.data import images as _images  # noqa: E402,F401  (registers the image datasets)
