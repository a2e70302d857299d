"""Synthetic label noise, deterministic in its own seed.

Kinds:
- `symmetric`: exactly round(rate * N) samples get a *different* class, uniform over the others.
- `symmetric_any`: the official Filter-KD code's variant (`utils.add_noise_to_y`): a fraction
  `rate` is redrawn uniformly over all K classes, so the true class may come back and the
  real flip rate is rate * (1 - 1/K).
- `asymmetric`: round(rate * N) samples are chosen and each flips to its class's pair: the
  standard CIFAR-10 pairs (truck->automobile, bird->airplane, deer->horse, cat<->dog) when
  K = 10 (chosen samples of unpaired classes keep their label, so about `rate` of each
  paired class flips), else the cyclic next class (exactly round(rate * N) flips).
- `matrix`: each sample's new label is drawn from row y of a user-given K x K transition matrix.
- `file`: real (e.g. human) noisy labels read from a file, no draw and no rate: see
  `noise_file.py` for the formats and which rows get which labels.
"""
from __future__ import annotations

import numpy as np

from filterkd_ray import InputError

NOISE_KINDS = ("symmetric", "symmetric_any", "asymmetric", "matrix", "file")

# CIFAR-10 class order: airplane automobile bird cat deer dog frog horse ship truck.
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def asymmetric_map(num_classes: int) -> np.ndarray:
    """Class -> class it flips to. Classes that never flip map to themselves."""
    if num_classes == 10:
        target = np.arange(10)
        for src, dst in CIFAR10_PAIRS.items():
            target[src] = dst
        return target
    return (np.arange(num_classes) + 1) % num_classes


def corrupt_labels(y, num_classes: int, rate: float, kind: str = "symmetric", seed: int = 0,
                   matrix=None) -> np.ndarray:
    """Return noisy labels (int64, same shape as y); y itself is never modified."""
    y = np.asarray(y, dtype=np.int64)
    if kind not in NOISE_KINDS:
        raise InputError(f"noise kind: unknown {kind!r}; choose one of {list(NOISE_KINDS)}")
    if kind == "file":
        raise InputError("noise kind 'file': labels come from data.noise.path, not a draw "
                         "(use apply_noise with path=...)")
    if not 0.0 <= rate < 1.0:
        raise InputError(f"noise rate: {rate} is outside [0, 1)")
    if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise InputError(f"labels: need a 1-d array of classes in [0, {num_classes}); "
                         f"got shape {y.shape}")
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    n = len(y)
    if kind == "matrix":
        m = _check_matrix(matrix, num_classes)
        cum = np.cumsum(m, axis=1)
        u = rng.random(n)
        return np.minimum((u[:, None] >= cum[y]).sum(1), num_classes - 1).astype(np.int64)
    if rate == 0.0:
        return noisy
    if kind == "symmetric_any":
        chosen = rng.random(n) < rate
        noisy[chosen] = rng.integers(0, num_classes, size=int(chosen.sum()))
        return noisy
    chosen = rng.permutation(n)[: int(round(rate * n))]
    if kind == "symmetric":
        # An offset in 1..K-1 gives a uniformly random *other* class.
        noisy[chosen] = (y[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    else:  # asymmetric
        noisy[chosen] = asymmetric_map(num_classes)[y[chosen]]
    return noisy


def _check_matrix(matrix, num_classes: int) -> np.ndarray:
    if matrix is None:
        raise InputError("noise.matrix: kind 'matrix' needs a K x K transition matrix")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (num_classes, num_classes) or (m < 0).any() \
            or not np.allclose(m.sum(1), 1.0, atol=1e-6):
        raise InputError(f"noise.matrix: need a {num_classes}x{num_classes} non-negative matrix "
                         f"whose rows sum to 1; got shape {m.shape}")
    return m


def apply_noise(dataset, rate: float, kind: str, seed: int, matrix=None, path=None, key=None):
    """Noisy labels on train and validation (selection sees what training sees); never test.

    kind 'file' reads them from `path` (`key`: the entry in a .pt/.npz), mapped onto the rows
    by the loader's recorded `Split.source_index`."""
    import dataclasses
    if kind == "file":
        from filterkd_ray.data.noise_file import apply_file_noise
        if path is None:
            raise InputError("data.noise.path: kind 'file' needs the path of a label file")
        return apply_file_noise(dataset, path, key)
    out = dataclasses.replace(dataset)
    for i, name in enumerate(("train", "val")):
        split = getattr(dataset, name)
        noisy = corrupt_labels(split.y, dataset.num_classes, rate, kind, [seed, i], matrix)
        setattr(out, name, dataclasses.replace(split, y_noisy=noisy))
    return out
