"""MobileNetV2 (Sandler et al. 2018) with CIFAR strides: a stride-1 stem and the second
stage at stride 1, so 32x32 inputs end at 4x4 instead of 1x1 (the common CIFAR variant).
Adaptive average pool head; any input size, channels and classes."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from filterkd_ray.models import register_model

# (expansion, out_planes, num_blocks, stride); ImageNet has stride 2 in rows 2 and 1st conv.
CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        planes = expansion * in_planes
        self.use_res = stride == 1 and in_planes == out_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))   # linear bottleneck: no activation
        return out + x if self.use_res else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, c = [], 32
        for expansion, out, n, stride in CONFIG:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(c, out, expansion, s))
                c = out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(c, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(self.layers(out))))
        return self.linear(self.pool(out).flatten(1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MobileNetV2(num_classes, input_shape[0])
