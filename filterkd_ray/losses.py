"""The student loss shared by every method.

    loss = (1 - w) * CE(y_noisy, s) + w * loss_scale * T^2 * KL(softmax(t / T) || softmax(s / T))

`t` is the target as log-probabilities at T = 1 (a teacher's log-softmax, or log q of a
table), so tempering a table q gives softmax(log q / T), as the official `main_distill.py`
does. Hinton's T^2 keeps gradient magnitudes comparable across temperatures. The official
code multiplies every distillation loss by an extra 2 (paper-notes bug 5): that is
`loss_scale=2`; the default is 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tempered(target_logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Target probabilities softmax(log p / T)."""
    return torch.softmax(target_logp / temperature, dim=-1)


def distill_loss(logits: torch.Tensor, y: torch.Tensor, target_logp: torch.Tensor | None = None,
                 temperature: float = 1.0, weight: float = 0.0,
                 loss_scale: float = 1.0) -> torch.Tensor:
    ce = F.cross_entropy(logits, y)
    if target_logp is None or weight == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=-1), tempered(target_logp.float(), t),
                  reduction="batchmean")
    return (1.0 - weight) * ce + weight * loss_scale * t * t * kl
