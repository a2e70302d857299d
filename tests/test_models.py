"""Every registered model: forward and backward on CPU at 32x32 and 64x64 (3 channels), and
8x8 single-channel digits, with 10 and 200 classes; every parameter gets a finite,
non-zero gradient and the output has the right shape."""
from __future__ import annotations

import pytest
import torch

from filterkd_ray import InputError
from filterkd_ray.models import MODELS, create_model

SHAPES = [(3, 32, 32), (3, 64, 64), (1, 8, 8)]
CLASSES = [10, 200]
# resnet50/resnet34/vgg16 at 64x64 take a second or more each on a shared core.
SLOW = {"resnet50", "resnet34", "vgg16"}


def _cases():
    for name in sorted(MODELS):
        for shape in SHAPES:
            for k in CLASSES:
                slow = name in SLOW and shape[1] == 64
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(name, shape, k, marks=marks,
                                   id=f"{name}-{shape[0]}x{shape[1]}x{shape[2]}-{k}")


@pytest.mark.parametrize("name,shape,num_classes", list(_cases()))
def test_forward_backward(name, shape, num_classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes, shape)
    model.train()
    # Batch 2, except at 8x8 where the deep stages are 1x1: BatchNorm over 2 values there
    # outputs exactly +-1 whatever its input, so nothing before it could get a gradient.
    b = 4 if shape[1] == 8 else 2
    x = torch.randn(b, *shape)
    y = torch.arange(b) * (num_classes - 1) // (b - 1)
    out = model(x)
    assert out.shape == (b, num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_registry_lists_the_paper_architectures():
    assert {"mlp", "resnet18", "resnet34", "resnet50", "preact_resnet18", "vgg11", "vgg16",
            "mobilenetv2", "fastnet"} <= set(MODELS)


def test_fastnet_is_small():
    n = sum(p.numel() for p in create_model("fastnet", 10, (3, 32, 32)).parameters())
    assert 50_000 <= n <= 100_000


def test_unknown_model():
    with pytest.raises(InputError, match="resnet19"):
        create_model("resnet19", 10, (3, 32, 32))
