"""Learning-path analysis: base difficulty, a zig-zag score, and what the Filter-KD filter
recovers as a function of its EMA rate and snapshot epoch.

A learning path is the teacher's train-mode prediction for every training sample at every
epoch, `path[t, i] = q_t(x_i)`, float [E, N, K] (see engine.fit(record_path=True)). Every
function here is vectorised over samples; loops run over epochs (or EMA rates) only, so a
CIFAR-sized path (E=200, N=50k) is analysed without a float32 copy of the whole array.

Zig-zag score (the paper's appendix defines one; its formula is unverified, so this is ours):

    Z_i = sum_t ||q_{t+1} - q_t||_2  -  (||q_1 - e_y~||_2 - ||q_E - e_y~||_2)

the length of the path minus its net approach to the corner of its training label y~,
i.e. the distance travelled that did not bring the prediction closer to its label. Written
per step, Z = sum_t (||q_{t+1} - q_t|| - (d_t - d_{t+1})) with d_t = ||q_t - e_y~||, and by
the triangle inequality every term is >= 0: a path that heads straight for its label scores
0; every detour (towards p* and another class, then back, as the paper's Figure 3 shows for
hard samples) and every back-and-forth step adds its length. It needs no p*, so it works on
real data; a mislabelled sample's path is pulled to its true class by similar samples and to
its noisy label by its own updates, so it zig-zags more (AUROC in docs/report.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from filterkd_ray import InputError
from filterkd_ray.labels import check_ema_rate


def _check_path(path) -> np.ndarray:
    path = np.asarray(path) if not isinstance(path, np.ndarray) else path
    if path.ndim != 3:
        raise InputError(f"path: need shape [epochs, N, K]; got {path.shape}")
    return path


def _check_labels(name: str, y, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise InputError(f"{name}: need shape ({n},) to match the path; got {y.shape}")
    if n and (y.min() < 0 or y.max() >= k):
        raise InputError(f"{name}: classes must lie in [0, {k}); got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def base_difficulty(y, p_star) -> np.ndarray:
    """||e_y - p*||_2 per sample, in [0, sqrt(2)]: how far a one-hot label is from the truth.

    Pass the label the model trains on (noisy or clean) as `y`."""
    p_star = np.asarray(p_star, np.float64)
    if p_star.ndim != 2:
        raise InputError(f"p_star: need shape [N, K]; got {p_star.shape}")
    y = _check_labels("y", y, *p_star.shape)
    diff = p_star.copy()
    diff[np.arange(len(y)), y] -= 1.0
    return np.linalg.norm(diff, axis=1)


def label_distance(path, y) -> np.ndarray:
    """d[t, i] = ||q_t(x_i) - e_{y_i}||_2, float32 [E, N] (one epoch at a time)."""
    path = _check_path(path)
    e, n, k = path.shape
    y = _check_labels("y", y, n, k)
    rows = np.arange(n)
    out = np.empty((e, n), np.float32)
    for t in range(e):
        q = path[t].astype(np.float32)
        q[rows, y] -= 1.0
        out[t] = np.linalg.norm(q, axis=1)
    return out


def path_length(path) -> np.ndarray:
    """sum_t ||q_{t+1} - q_t||_2 per sample, float64 [N]."""
    path = _check_path(path)
    total = np.zeros(path.shape[1], np.float64)
    prev = path[0].astype(np.float32)
    for t in range(1, path.shape[0]):
        cur = path[t].astype(np.float32)
        total += np.linalg.norm(cur - prev, axis=1)
        prev = cur
    return total


def zigzag_score(path, y_noisy) -> np.ndarray:
    """Z_i: path length minus net approach to the training label's corner (module docstring).

    >= 0 up to float rounding; 0 for a path that moves straight towards its label."""
    path = _check_path(path)
    y_noisy = _check_labels("y_noisy", y_noisy, path.shape[1], path.shape[2])
    first = label_distance(path[:1], y_noisy)[0].astype(np.float64)
    last = label_distance(path[-1:], y_noisy)[0].astype(np.float64)
    return path_length(path) - (first - last)


def label_integral(path, y_noisy) -> np.ndarray:
    """The paper's "integral" proxy of difficulty: mean over epochs of q_t(y~), float64 [N].

    Not a zig-zag measure (it rewards learning the label late, whatever the path's shape);
    reported beside the zig-zag score as a reference."""
    path = _check_path(path)
    n = path.shape[1]
    y_noisy = _check_labels("y_noisy", y_noisy, n, path.shape[2])
    rows = np.arange(n)
    total = np.zeros(n, np.float64)
    for t in range(path.shape[0]):
        total += path[t][rows, y_noisy]
    return total / path.shape[0]


def flip_auroc(flipped, score) -> float:
    """AUROC of `score` (higher = more likely mislabelled) for flipped vs clean samples;
    NaN when all or none are flipped."""
    flipped = np.asarray(flipped, bool)
    if flipped.all() or not flipped.any():
        return float("nan")        # AUROC needs both classes
    return float(roc_auc_score(flipped, score))


def zigzag_auroc(path, y_noisy, flipped) -> float:
    """AUROC of the zig-zag score for telling mislabelled (flipped) samples from clean ones:
    0.5 = no separation, 1 = every mislabelled sample zig-zags more than every clean one.
    NaN when all or none are flipped."""
    return flip_auroc(flipped, zigzag_score(path, y_noisy))


def integral_auroc(path, y_noisy, flipped) -> float:
    """AUROC of 1 - label_integral (the reference proxy) for flipped vs clean samples."""
    return flip_auroc(flipped, -label_integral(path, y_noisy))


def recovery_grid(path, y, y_noisy, ema_rates, uptos, p_star=None) -> pd.DataFrame:
    """Quality of the Filter-KD table `labels.filter_path(path, a, upto)` on a grid.

    One row per (ema_rate, upto) with: recovery (fraction of flipped samples whose filtered
    argmax is the clean label; NaN without flips), clean_acc (same over all samples), and
    dist_pstar (mean ||q - p*||_2, NaN without p*). `upto` counts epochs (1-based, inclusive)
    as in filter_path. One pass over the epochs per EMA rate, with the same float32
    arithmetic as filter_path, so each cell equals filter_path's table exactly.
    """
    path = _check_path(path)
    e, n, k = path.shape
    y = _check_labels("y", y, n, k)
    y_noisy = _check_labels("y_noisy", y_noisy, n, k)
    uptos = sorted({int(u) for u in uptos})
    if not uptos or uptos[0] < 1 or uptos[-1] > e:
        raise InputError(f"uptos: each must lie in [1, {e}] (epochs recorded); got {uptos}")
    rates = [float(a) for a in ema_rates]
    for a in rates:
        check_ema_rate(a)
    if p_star is not None:
        p_star = np.asarray(p_star, np.float32)
        if p_star.shape != (n, k):
            raise InputError(f"p_star: need shape ({n}, {k}); got {p_star.shape}")
    flipped = y_noisy != y
    rows = []
    for a in rates:
        q = path[0].astype(np.float32)
        for t in range(e):
            if t > 0:
                q *= 1.0 - a
                q += a * path[t].astype(np.float32)
            if t + 1 in uptos:
                hit = q.argmax(1) == y
                rows.append({
                    "ema_rate": a, "upto": t + 1,
                    "recovery": float(hit[flipped].mean()) if flipped.any() else np.nan,
                    "clean_acc": float(hit.mean()),
                    "dist_pstar": (float(np.linalg.norm(q - p_star, axis=1).mean())
                                   if p_star is not None else np.nan)})
            if t + 1 >= uptos[-1]:
                break
    return pd.DataFrame(rows, columns=["ema_rate", "upto", "recovery", "clean_acc", "dist_pstar"])
