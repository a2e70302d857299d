"""Accuracy, NLL, ECE and label quality. All take probabilities or tables as tensors/arrays."""
from __future__ import annotations

import numpy as np
import torch

ECE_BINS = 15


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return (probs.argmax(1) == y).float().mean().item()


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    p = probs.gather(1, y[:, None]).clamp_min(1e-12)
    return (-p.log()).mean().item()


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the max-probability prediction, binned exactly as
    torchmetrics' `MulticlassCalibrationError(norm="l1")`: bins [j/n, (j+1)/n) against the
    float32 edges linspace(0, 1, n + 1), plus one bin for confidence exactly 1 (a saturated
    float32 softmax is common), so numbers compare with papers that use torchmetrics."""
    conf, pred = probs.max(1)
    conf = conf.float()
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    bins = torch.bucketize(conf, edges, right=True) - 1
    count = torch.zeros(n_bins + 1, dtype=torch.float64, device=probs.device)
    conf_sum = torch.zeros_like(count)
    acc_sum = torch.zeros_like(count)
    count.index_add_(0, bins, torch.ones_like(conf, dtype=torch.float64))
    conf_sum.index_add_(0, bins, conf.double())
    acc_sum.index_add_(0, bins, correct)
    return ((conf_sum - acc_sum).abs().sum() / max(len(y), 1)).item()


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, prefix: str) -> dict[str, float]:
    return {f"{prefix}_acc": accuracy(probs, y), f"{prefix}_nll": nll(probs, y),
            f"{prefix}_ece": ece(probs, y)}


def label_quality(table: np.ndarray, y_clean: np.ndarray, y_noisy: np.ndarray,
                  p_star: np.ndarray | None) -> dict[str, float]:
    """How good a target table is as supervision.

    label_dist_pstar: mean over samples of ||table_i - p*_i||_2 (NaN where p* is unknown);
    label_recovery: of the samples whose noisy label differs from the clean one, the fraction
    whose target's argmax is the clean label (NaN without flipped samples);
    label_clean_acc: fraction of all samples whose target's argmax is the clean label.
    """
    table = np.asarray(table, np.float32)
    flipped = y_noisy != y_clean
    hit = table.argmax(1) == y_clean
    dist = float(np.linalg.norm(table - p_star, axis=1).mean()) if p_star is not None else np.nan
    return {"label_dist_pstar": dist,
            "label_recovery": float(hit[flipped].mean()) if flipped.any() else np.nan,
            "label_clean_acc": float(hit.mean())}
