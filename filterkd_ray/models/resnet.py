"""CIFAR-style ResNets (He et al. 2016 as adapted for 32x32 inputs, the paper's networks).

A 3x3 stride-1 stem and no max-pool keep small images at full resolution in the first
stage; the head is an adaptive average pool, so 32x32 CIFAR, 64x64 Tiny-ImageNet and 8x8
digits all work (the official code's fixed `avg_pool2d(4)` breaks at 64x64). Any number of
input channels and classes.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from filterkd_ray.models import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


@register_model("resnet18")
def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, input_shape[0])


@register_model("resnet34")
def resnet34(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, input_shape[0])


@register_model("resnet50")
def resnet50(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, input_shape[0])
