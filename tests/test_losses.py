"""The distillation loss has the gradient its formula promises.

    L = (1 - w) CE(y, s) + w * loss_scale * T^2 * KL(softmax(t / T) || softmax(s / T))
    dL/ds = [(1 - w)(softmax(s) - e_y) + w * loss_scale * T (softmax(s / T) - softmax(t / T))] / B

Autograd of `distill_loss` is compared with that hand-written gradient.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from filterkd_ray.losses import distill_loss, tempered


def batch(b=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g) * 3
    y = torch.randint(0, k, (b,), generator=g)
    t = F.log_softmax(torch.randn(b, k, generator=g) * 2, -1)   # target log-probabilities
    return s, y, t


def analytic_grad(s, y, t, w, T, scale):
    b, k = s.shape
    ce = torch.softmax(s, -1) - F.one_hot(y, k).float()
    kd = T * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1))
    return ((1 - w) * ce + w * scale * kd) / b


def direct_loss(s, y, t, w, T, scale):
    """The formula in float64, term by term."""
    s, t = s.double(), t.double()
    logp = torch.log_softmax(s, -1)
    ce = -logp[torch.arange(len(y)), y].mean()
    q = torch.softmax(t / T, -1)
    kl = (q * (q.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    return (1 - w) * ce + w * scale * T * T * kl


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T", [1.0, 0.5, 4.0])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_gradient_matches_the_formula(w, T, scale):
    s, y, t = batch(seed=int(10 * w + T))
    s.requires_grad_(True)
    loss = distill_loss(s, y, t, temperature=T, weight=w, loss_scale=scale)
    loss.backward()
    np.testing.assert_allclose(s.grad.numpy(), analytic_grad(s.detach(), y, t, w, T, scale).numpy(),
                               atol=2e-6, rtol=1e-5)
    assert abs(loss.item() - direct_loss(s.detach(), y, t, w, T, scale).item()) < 1e-5


def test_weight_zero_or_no_target_is_plain_cross_entropy():
    s, y, t = batch()
    ce = F.cross_entropy(s, y)
    assert torch.equal(distill_loss(s, y, t, temperature=3.0, weight=0.0, loss_scale=2.0), ce)
    assert torch.equal(distill_loss(s, y, None, temperature=3.0, weight=0.7), ce)


def test_loss_scale_multiplies_only_the_distillation_term():
    s, y, t = batch(seed=3)
    w, T = 0.4, 2.0
    l1 = distill_loss(s, y, t, T, w, loss_scale=1.0)
    l2 = distill_loss(s, y, t, T, w, loss_scale=2.0)
    l0 = (1 - w) * F.cross_entropy(s, y)     # the CE part alone
    assert torch.allclose(l2 - l1, l1 - l0, atol=1e-6)
    assert (l1 - l0).item() > 0


def test_target_equal_to_student_gives_zero_kd_term_and_tempering():
    s, y, _ = batch(seed=4)
    t = F.log_softmax(s, -1)
    assert torch.allclose(distill_loss(s, y, t, 2.0, 1.0), torch.zeros(()), atol=1e-6)
    # softmax(log q / T): T = 1 renormalises q, large T flattens it toward uniform.
    assert torch.allclose(tempered(t, 1.0), torch.softmax(s, -1), atol=1e-6)
    flat = tempered(t, 1e6)
    assert torch.allclose(flat, torch.full_like(flat, 1 / s.shape[1]), atol=1e-4)
