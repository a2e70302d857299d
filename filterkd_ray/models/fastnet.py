"""fastnet: a small, fast CNN for CPU sweeps on real images, in the spirit of airbench.

Why this shape: on a CPU the cost of a small CNN is dominated by full-resolution feature
maps (convolution, BN and ReLU on 32x32 maps are memory-bound), not by its parameter
count. So it downsamples early: a stride-2 stem and a max-pool take 32x32 to 8x8 before
the first wide convolution, then conv 64 @ 8x8, pool, conv 128 @ 4x4, a global max-pool
(airbench's head) and a linear layer: ~95k parameters, ~2.3M multiply-adds per 32x32
image. It runs in channels_last, measured ~40% faster than NCHW for this net on CPU.

Measured (benchmarks in docs/images.md): ~1,100-2,800 training images/s on one shared
core, i.e. an epoch of 9k 32x32 images in about 3-8 s.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from filterkd_ray.models import register_model

STEM, WIDTHS = 32, (64, 128)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class FastNet(nn.Module):
    def __init__(self, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        c, h, w = input_shape
        layers = conv_bn_relu(c, STEM, stride=2)
        h, w, c = (h + 1) // 2, (w + 1) // 2, STEM
        for width in WIDTHS:
            if h >= 2 and w >= 2:   # tiny inputs (8x8 digits) skip pools they can't take
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            layers += conv_bn_relu(c, width)
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.linear(self.pool(self.features(x)).flatten(1))


@register_model("fastnet")
def fastnet(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    if len(input_shape) != 3:
        from filterkd_ray import InputError
        raise InputError(f"model fastnet: needs image inputs [C, H, W]; got shape {input_shape}")
    return FastNet(num_classes, input_shape).to(memory_format=torch.channels_last)
