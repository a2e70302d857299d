"""The paper's toy problem: a Gaussian mixture whose true posterior p*(y|x) is known exactly.

Means mu_k have entries uniform on {-1, 0, 1}; y is uniform over K classes;
x | y=k ~ N(mu_k, sigma^2 I). With a uniform prior and shared isotropic covariance,
p*(k|x) = softmax_k(-||x - mu_k||^2 / (2 sigma^2)). Paper: K=3, d=30, sigma^2=6,
100,000 samples split 5% / 5% / 90% (train / validation / test); Bayes accuracy ~0.843.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from filterkd_ray import InputError
from filterkd_ray.data import Dataset, Split, register_dataset


@dataclasses.dataclass
class ToyData:
    x: np.ndarray       # float32 [n, d]
    y: np.ndarray       # int64 [n]
    p_star: np.ndarray  # float32 [n, K]
    means: np.ndarray   # float32 [K, d]
    variance: float


def toy_posterior(x: np.ndarray, means: np.ndarray, variance: float) -> np.ndarray:
    """Exact p*(y|x) for the mixture, computed in float64 for a stable softmax."""
    x = np.asarray(x, np.float64)
    sq = ((x[:, None, :] - np.asarray(means, np.float64)[None]) ** 2).sum(-1)
    logits = -sq / (2.0 * variance)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def make_toy(n: int, num_classes: int = 3, dim: int = 30, variance: float = 6.0,
             seed: int = 0) -> ToyData:
    if n <= 0 or num_classes < 2 or dim < 1 or variance <= 0:
        raise InputError("make_toy: need n > 0, num_classes >= 2, dim >= 1, variance > 0; "
                         f"got n={n}, num_classes={num_classes}, dim={dim}, variance={variance}")
    rng = np.random.default_rng(seed)
    means = rng.integers(-1, 2, size=(num_classes, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = (means[y] + np.sqrt(variance) * rng.standard_normal((n, dim))).astype(np.float32)
    return ToyData(x=x, y=y, p_star=toy_posterior(x, means, variance), means=means,
                   variance=float(variance))


@register_dataset("toy")
def load_toy(n_train: int = 5000, n_val: int = 5000, n_test: int = 20000,
             num_classes: int = 3, dim: int = 30, variance: float = 6.0, seed: int = 0) -> Dataset:
    """One draw of the mixture cut in order into train / validation / test, as the paper does.

    The source training pool is train then validation as drawn: train row i is pool row i,
    validation row j is pool row n_train + j, so a label file over the pool holds
    n_train + n_val labels (the test cut is never labelled by a file)."""
    toy = make_toy(n_train + n_val + n_test, num_classes, dim, variance, seed)
    cuts = [0, n_train, n_train + n_val, n_train + n_val + n_test]
    splits = [Split(x=toy.x[a:b], y=toy.y[a:b], p_star=toy.p_star[a:b],
                    source_index=np.arange(a, b, dtype=np.int64) if i < 2 else None)
              for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    return Dataset(name="toy", num_classes=num_classes, train=splits[0], val=splits[1],
                   test=splits[2], source_size=n_train + n_val)
