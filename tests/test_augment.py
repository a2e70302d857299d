"""Batched augmentation: crops are windows of the zero-padded image, flips are exact
mirrors, cutout is an exact square, and the generator alone decides the result."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from filterkd_ray.data.augment import CUTOUT, PAD, augment, cutout, random_crop, random_flip


def batch(b=48, c=3, h=12, w=10, dtype=torch.float32):
    # Distinct positive values: every window of the padded image is unique and zero marks padding.
    x = torch.randperm(b * c * h * w).reshape(b, c, h, w) + 1
    return x.to(dtype)


def windows(img: torch.Tensor, pad: int = PAD) -> list[torch.Tensor]:
    """All (2 pad + 1)^2 crops of one zero-padded image [C, H, W]."""
    c, h, w = img.shape
    p = F.pad(img, (pad, pad, pad, pad))
    return [p[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


def window_index(out: torch.Tensor, img: torch.Tensor) -> int:
    """Which padded window `out` is (-1 if none)."""
    for k, win in enumerate(windows(img)):
        if torch.equal(out, win):
            return k
    return -1


def test_crop_is_a_window_of_the_padded_image():
    x = batch()
    out = random_crop(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    found = [window_index(o, img) for o, img in zip(out, x)]
    assert -1 not in found
    assert len(set(found)) > 10   # offsets really vary (81 possible)


def test_crop_uint8_stays_uint8():
    x = batch(b=8, dtype=torch.uint8) % 250 + 1
    x = x.to(torch.uint8)
    out = random_crop(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8
    assert all(window_index(o, img) >= 0 for o, img in zip(out, x))


def test_flip_is_an_exact_mirror():
    x = batch()
    out = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(o, img.flip(2)) for o, img in zip(out, x)]
    same = [torch.equal(o, img) for o, img in zip(out, x)]
    assert all(m != s for m, s in zip(mirrored, same))   # each one or the other, never both
    assert 5 < sum(mirrored) < len(x) - 5


def test_crop_flip_is_a_window_of_the_image_or_its_mirror():
    x = batch()
    out = augment(x, "crop_flip", torch.Generator().manual_seed(3))
    kinds = []
    for o, img in zip(out, x):
        plain, mirror = window_index(o, img), window_index(o, img.flip(2))
        assert (plain >= 0) != (mirror >= 0)
        kinds.append(mirror >= 0)
    assert 5 < sum(kinds) < len(x) - 5


def test_fused_crop_flip_equals_crop_then_flip():
    # augment() fuses both into one gather; it must equal the two steps with the same draws.
    x = torch.rand(64, 3, 32, 32)
    for seed in range(3):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(augment(x, "crop_flip", g1), random_flip(random_crop(x, g2), g2))


def test_same_seed_same_batch_different_seed_different():
    x = torch.rand(32, 3, 16, 16)
    for kind in ("crop_flip", "crop_flip_cutout"):
        a = augment(x, kind, torch.Generator().manual_seed(7))
        b = augment(x, kind, torch.Generator().manual_seed(7))
        c = augment(x, kind, torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment(x, "none", torch.Generator().manual_seed(0)) is x


def test_cutout_zeroes_one_clipped_square():
    x = torch.rand(64, 3, 32, 32) + 0.1   # no zeros of its own
    out = cutout(x, torch.Generator().manual_seed(0))
    for o, img in zip(out, x):
        zero = (o == 0).all(0)
        assert (zero == (o == 0).any(0)).all()     # all channels together
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert 1 <= len(rows) <= CUTOUT and 1 <= len(cols) <= CUTOUT
        assert zero.sum() == len(rows) * len(cols)   # a rectangle (square unless clipped)
        assert torch.equal(o[:, ~zero], img[:, ~zero])
    full = [(o == 0).all(0).sum().item() for o in out]
    assert CUTOUT * CUTOUT in full and max(full) == CUTOUT * CUTOUT


def test_unknown_kind():
    with pytest.raises(ValueError, match="mixup"):
        augment(torch.rand(2, 3, 8, 8), "mixup", torch.Generator())


def test_flip_kind_only_mirrors():
    x = batch()
    out = augment(x, "flip", torch.Generator().manual_seed(0))
    assert all(torch.equal(o, img) or torch.equal(o, img.flip(2)) for o, img in zip(out, x))
    assert not torch.equal(out, x)
