"""Pre-activation ResNet-18 (He et al. 2016b), CIFAR-style: BN-ReLU before each conv, a
3x3 stride-1 stem, adaptive average pool head (any input size, channels and classes)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from filterkd_ray.models import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        # The projection shortcut takes the pre-activated input, as in the paper.
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            for s in [stride] + [1] * (n - 1):
                layers.append(PreActBlock(self.in_planes, planes, s))
                self.in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)   # the final pre-activation before pooling
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(self.pool(out).flatten(1))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return PreActResNet([2, 2, 2, 2], num_classes, input_shape[0])
