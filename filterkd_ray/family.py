"""The prediction-memory family: methods whose targets come from the student's own past
predictions, kept in a per-sample table indexed by sample id (the same primitive as
Filter-KD's table, but filled online by the network being trained, so no teacher is needed).

Registered into `labels.METHODS` (labels.py imports this module at its end):

- `temporal_ensembling`  Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning",
  ICLR 2017: Z_i <- alpha Z_i + (1 - alpha) z_i once per epoch, target Z_i / (1 - alpha^t).
- `ps_kd`   Kim et al., "Self-Knowledge Distillation with Progressive Refinement of
  Targets", ICCV 2021: target (1 - a_t) y + a_t p_{t-1}, a_t = alpha_T (t + 1) / T.
- `sat`     Huang et al., "Self-Adaptive Training: beyond Empirical Risk Minimization",
  NeurIPS 2020: after epoch E_s, t_i <- m t_i + (1 - m) p_i replaces the label.
- `elr`     Liu et al., "Early-Learning Regularization Prevents Memorization of Noisy
  Labels", NeurIPS 2020: CE + lambda * mean log(1 - <t_i, p_i>), t_i <- beta t_i + (1-beta) p_i.

Naming: every EMA here is written with `ema_rate` a = the weight of the NEWEST prediction,
as in Filter-KD's q_t = (1 - a) q_{t-1} + a p_t. The papers write the weight of the OLD value
(alpha, m, beta), so a = 1 - alpha = 1 - m = 1 - beta. Paper defaults in these terms:
temporal ensembling a = 0.4 (alpha 0.6), SAT a = 0.1 (m 0.9), ELR a = 0.3 (beta 0.7, CIFAR-10)
or 0.1 (beta 0.9, CIFAR-100); see `PAPER_DEFAULTS`.

How they meet the engine (`engine.fit`): each is a `MemoryTarget`, a `labels.Target` whose
memory lives on the training device. The engine calls `start_epoch(epoch)` before an epoch,
`batch(idx, x)` and the loss, then `regularizer(logits, idx)`, then `observe(idx, logits,
epoch)` before the optimiser step; and, through optional methods, `set_total_epochs(E)`
before training (PS-KD's ramp needs the run length) and `state_dict()` /
`load_state_dict()` with each checkpoint, so a resumed trial continues its memory instead
of restarting it. `table` is read live from the memory, so the label-quality columns of a
result row describe the memory at the end of training.

Under DDP every rank keeps the full [N, K] memory: each update is all-gathered (indices and
rows) so all ranks hold the same table, as PS-KD's official code does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from filterkd_ray import InputError
from filterkd_ray.labels import DEFAULT_HPARAMS, Target, register_method
from filterkd_ray.losses import tempered

FAMILY = ("temporal_ensembling", "ps_kd", "sat", "elr")

# The papers' own settings, written in this package's hyperparameter names.
PAPER_DEFAULTS = {
    "temporal_ensembling": {"ema_rate": 0.4, "temperature": 1.0, "distill_weight": 1.0},
    "ps_kd": {"pskd_alpha": 0.8},
    "sat": {"ema_rate": 0.1, "start_epoch": 60},     # of 200 epochs (CIFAR)
    "elr": {"ema_rate": 0.3, "elr_lambda": 3.0},     # CIFAR-10; CIFAR-100: 0.1 and 7
}

# Defaults `filterkd-ray run` uses when a hyperparameter is not given (one value per name,
# shared by every method that reads it; `ema_rate` keeps Filter-KD's 0.05).
DEFAULT_HPARAMS.update({"pskd_alpha": 0.8, "start_epoch": 5, "elr_lambda": 3.0})

LOG_FLOOR = 1e-12     # log of a zero target probability (one-hot rows)


def check_family_hparams(hp: dict) -> None:
    """The new hyperparameters' ranges (labels.check_hparams checks the shared ones)."""
    if "pskd_alpha" in hp and not 0.0 <= hp["pskd_alpha"] <= 1.0:
        raise InputError(f"pskd_alpha: {hp['pskd_alpha']} is outside [0, 1]")
    if "start_epoch" in hp and not (hp["start_epoch"] >= 0 and math.isfinite(hp["start_epoch"])):
        raise InputError(f"start_epoch: {hp['start_epoch']} must be a number of epochs >= 0")
    if "elr_lambda" in hp and not (hp["elr_lambda"] >= 0 and math.isfinite(hp["elr_lambda"])):
        raise InputError(f"elr_lambda: {hp['elr_lambda']} must be >= 0")


def gather_rows(idx: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (indices, rows) of this step under DDP; the inputs unchanged otherwise.

    The engine gives every rank the same number of steps of the same batch size, so the
    all_gather shapes agree."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return idx, rows
    world = dist.get_world_size()
    idxs = [torch.empty_like(idx) for _ in range(world)]
    bufs = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(idxs, idx.contiguous())
    dist.all_gather(bufs, rows.contiguous())
    return torch.cat(idxs), torch.cat(bufs)


class MemoryTarget(Target):
    """A `Target` backed by per-sample tensors in `self.mem` (all on the training device).

    Subclasses implement `_table` and any of `_batch` (default: no soft target), `_start`,
    `_observe`, `_regularizer`."""

    def __init__(self, y_noisy, num_classes: int, device, temperature: float = 1.0,
                 weight: float = 0.0):
        self.device = torch.device(device)
        self.y = torch.as_tensor(np.asarray(y_noisy), dtype=torch.long, device=self.device)
        self.num_classes = num_classes
        self.onehot = F.one_hot(self.y, num_classes).float()
        self.mem: dict[str, torch.Tensor] = {}
        self.total_epochs: int | None = None
        # Only the hooks a subclass defines go to the engine (None = not called).
        super().__init__(batch=self._batch, table=None, temperature=temperature, weight=weight,
                         start_epoch=getattr(self, "_start", None),
                         observe=getattr(self, "_observe", None),
                         regularizer=getattr(self, "_regularizer", None))

    # `table` is a live view: the dataclass __init__ assigns it once (ignored here).
    @property
    def table(self) -> np.ndarray:
        return self._table().detach().float().cpu().numpy()

    @table.setter
    def table(self, value) -> None:
        pass

    def _batch(self, idx, x):
        return None

    def _table(self) -> torch.Tensor:
        raise NotImplementedError

    def set_total_epochs(self, epochs: int) -> None:
        """Called by engine.fit before training: schedules that span the run need it."""
        self.total_epochs = int(epochs)

    def state_dict(self) -> dict:
        """The memory, for a checkpoint (CPU copies; the engine stores it with the model)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.mem.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.mem[k].copy_(torch.as_tensor(v).to(self.device))


def _log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(LOG_FLOOR).log()


class TemporalEnsembling(MemoryTarget):
    """Laine & Aila (ICLR 2017), Algorithm 2, with the label-noise twist of mixing the
    ensemble target with the label through the distillation weight.

    Epoch-wise update, as in the paper: the epoch's train-mode predictions z_i are collected
    while it runs and folded in when it ends (at the next `start_epoch`, or when `table` is
    read): Z_i <- (1 - a) Z_i + a z_i, t_i += 1 (a = ema_rate = 1 - alpha). The target is the
    bias-corrected z~_i = Z_i / (1 - (1 - a)^t_i), a probability vector, used as the
    soft target at temperature T with weight w: loss = (1-w) CE(y) + w T^2 KL(z~^T || s^T).
    Epoch 0 has no ensemble yet: its weight is 0 (plain CE), as the paper's ramp w(0) = 0.
    The count t_i is per sample, so a sample skipped in an epoch (drop_last) keeps a correct
    bias correction; a sample never folded in yet falls back to its one-hot label.
    """

    def __init__(self, y_noisy, num_classes, device, ema_rate, temperature, distill_weight):
        super().__init__(y_noisy, num_classes, device, temperature, 0.0)
        self.a, self.w = float(ema_rate), float(distill_weight)
        n = len(self.y)
        self.mem = {"Z": torch.zeros(n, num_classes, device=self.device),
                    "acc": torch.zeros(n, num_classes, device=self.device),
                    "visited": torch.zeros(n, dtype=torch.bool, device=self.device),
                    "count": torch.zeros(n, dtype=torch.long, device=self.device)}

    def _flush(self) -> None:
        m = self.mem
        v = m["visited"][:, None]
        m["Z"].copy_(torch.where(v, (1 - self.a) * m["Z"] + self.a * m["acc"], m["Z"]))
        m["count"] += m["visited"].long()
        m["visited"].zero_()

    def _start(self, epoch: int) -> None:
        self._flush()
        self.weight = self.w if bool((self.mem["count"] > 0).any()) else 0.0

    def _observe(self, idx, logits, epoch) -> None:
        idx, p = gather_rows(idx, torch.softmax(logits.float(), -1))
        self.mem["acc"][idx] = p
        self.mem["visited"][idx] = True

    def ensemble(self, idx=None) -> torch.Tensor:
        """z~ (bias-corrected) for `idx` (all samples if None); one-hot where t_i = 0."""
        Z, count = self.mem["Z"], self.mem["count"]
        onehot = self.onehot
        if idx is not None:
            Z, count, onehot = Z[idx], count[idx], onehot[idx]
        denom = (1.0 - torch.pow(1.0 - self.a, count.double())).float().clamp_min(1e-12)
        return torch.where(count[:, None] > 0, Z / denom[:, None], onehot)

    def _batch(self, idx, x):
        return _log(self.ensemble(idx))

    def _table(self):
        self._flush()
        return tempered(_log(self.ensemble()), self.temperature)


class PSKD(MemoryTarget):
    """Kim et al. (ICCV 2021), as the official code (lgcnsai/PS-KD-Pytorch, main.py) runs it.

    Target in epoch t (0-based) for sample i: (1 - a_t) y_i + a_t p_i, where p_i is the
    softmax the network gave sample i at its visit in the previous epoch (stored per visit,
    after the loss, so the value read in epoch t is from epoch t - 1) and
    a_t = alpha_T (t + 1) / T grows linearly to alpha_T in the last epoch (T = epochs).
    Epoch 0 uses the one-hot label (no previous prediction). Since soft-target CE against
    (1-a) y + a p has the gradient of (1-a) CE(y) + a KL(p || s), this is the shared
    distillation loss with weight a_t at T = 1 (with `loss_scale` = 1, the default).
    """

    def __init__(self, y_noisy, num_classes, device, pskd_alpha):
        super().__init__(y_noisy, num_classes, device, 1.0, 0.0)
        self.alpha_T = float(pskd_alpha)
        n = len(self.y)
        self.mem = {"P": torch.zeros(n, num_classes, device=self.device),
                    "seen": torch.zeros(n, dtype=torch.bool, device=self.device)}

    def alpha_at(self, epoch: int) -> float:
        if self.total_epochs is None:
            raise InputError("ps_kd: the run length is unknown; engine.fit sets it "
                             "(call target.set_total_epochs(epochs) when driving it by hand)")
        return self.alpha_T * (epoch + 1) / self.total_epochs

    def _start(self, epoch: int) -> None:
        self.weight = 0.0 if epoch == 0 else self.alpha_at(epoch)

    def _observe(self, idx, logits, epoch) -> None:
        idx, p = gather_rows(idx, torch.softmax(logits.float(), -1))
        self.mem["P"][idx] = p
        self.mem["seen"][idx] = True

    def previous(self, idx=None) -> torch.Tensor:
        P, seen, onehot = self.mem["P"], self.mem["seen"], self.onehot
        if idx is not None:
            P, seen, onehot = P[idx], seen[idx], onehot[idx]
        return torch.where(seen[:, None], P, onehot)

    def _batch(self, idx, x):
        return _log(self.previous(idx))

    def _table(self):
        # The target the next epoch would use, at the final weight alpha_T.
        return (1 - self.alpha_T) * self.onehot + self.alpha_T * self.previous()


class SelfAdaptiveTraining(MemoryTarget):
    """Huang et al. (NeurIPS 2020), as the official SelfAdaptiveTrainingCE
    (LayneH/self-adaptive-training) computes it.

    t_i starts as the one-hot noisy label. Epochs before E_s = start_epoch: plain CE.
    From E_s on, in each step, first t_i <- (1 - a) t_i + a p_i with the current detached
    softmax p_i (a = ema_rate = 1 - m), then the loss is the soft-target CE against the
    updated t_i, each sample weighted by w_i = max_k t_ik normalised to mean 1 over the
    batch (the paper's sample re-weighting, always on here as in the official code).

    The update must use this step's prediction before the loss, so SAT works in the
    `regularizer` hook (the only one that sees the logits before the loss): the engine always
    adds (1 - w) CE(y) with w = 0 here, so the hook returns SAT's loss minus that CE and the
    total is exactly SAT's loss.
    """

    def __init__(self, y_noisy, num_classes, device, ema_rate, start_epoch):
        super().__init__(y_noisy, num_classes, device, 1.0, 0.0)
        self.a, self.es = float(ema_rate), float(start_epoch)
        self.active = False
        self.mem = {"t": self.onehot.clone()}

    def _start(self, epoch: int) -> None:
        self.active = epoch >= self.es

    def update(self, idx, probs) -> None:
        idx, probs = gather_rows(idx, probs)
        t = self.mem["t"]
        t[idx] = (1 - self.a) * t[idx] + self.a * probs

    def _regularizer(self, logits, idx):
        if not self.active:
            return logits.new_zeros(())
        self.update(idx, torch.softmax(logits.detach().float(), -1))
        t = self.mem["t"][idx]
        w = t.max(1).values
        w = w * len(idx) / w.sum()
        sat = ((-(F.log_softmax(logits, -1) * t).sum(1)) * w).mean()
        return sat - F.cross_entropy(logits, self.y[idx])

    def _table(self):
        return self.mem["t"]


class EarlyLearningRegularization(MemoryTarget):
    """Liu et al. (NeurIPS 2020), as the official elr_loss (shengliu66/ELR) computes it.

    In each step: p = clamp(softmax(s), 1e-4, 1 - 1e-4); the target t_i (zeros at the start)
    is updated first, t_i <- (1 - a) t_i + a p_i / sum(p_i) with p detached (a = ema_rate =
    1 - beta), then loss = CE(y) + lambda * mean_i log(1 - <t_i, p_i>), gradients through p.
    The update sits in the `regularizer` hook because it needs this step's prediction before
    the loss. The table (label quality) is t normalised per row (t sums to 1 - (1-a)^visits).
    """

    def __init__(self, y_noisy, num_classes, device, ema_rate, elr_lambda):
        super().__init__(y_noisy, num_classes, device, 1.0, 0.0)
        self.a, self.lam = float(ema_rate), float(elr_lambda)
        self.mem = {"t": torch.zeros(len(self.y), num_classes, device=self.device)}

    def update(self, idx, probs) -> None:
        idx, probs = gather_rows(idx, probs)
        t = self.mem["t"]
        t[idx] = (1 - self.a) * t[idx] + self.a * probs

    def _regularizer(self, logits, idx):
        p = torch.softmax(logits.float(), -1).clamp(1e-4, 1.0 - 1e-4)
        pd = p.detach()
        self.update(idx, pd / pd.sum(1, keepdim=True))
        reg = (1 - (self.mem["t"][idx] * p).sum(1)).log().mean()
        return self.lam * reg

    def _table(self):
        t = self.mem["t"]
        s = t.sum(1, keepdim=True)
        return torch.where(s > 0, t / s.clamp_min(1e-12), self.onehot)


# --------------------------------------------------------------------------- registry

@register_method("temporal_ensembling", params=("ema_rate", "temperature", "distill_weight"),
                 needs_teacher=False)
def _temporal_ensembling(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    return TemporalEnsembling(y_noisy, num_classes, device, hp["ema_rate"], hp["temperature"],
                              hp["distill_weight"])


@register_method("ps_kd", params=("pskd_alpha",), needs_teacher=False)
def _ps_kd(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    check_family_hparams(hp)
    return PSKD(y_noisy, num_classes, device, hp["pskd_alpha"])


@register_method("sat", params=("ema_rate", "start_epoch"), needs_teacher=False)
def _sat(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    check_family_hparams(hp)
    return SelfAdaptiveTraining(y_noisy, num_classes, device, hp["ema_rate"], hp["start_epoch"])


@register_method("elr", params=("ema_rate", "elr_lambda"), needs_teacher=False)
def _elr(hp, y_noisy, num_classes, teacher, train_x, device) -> Target:
    check_family_hparams(hp)
    return EarlyLearningRegularization(y_noisy, num_classes, device, hp["ema_rate"],
                                       hp["elr_lambda"])
