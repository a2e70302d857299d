"""VGG with batch norm (Simonyan & Zisserman 2015), CIFAR-style: 3x3 convs, a 512 -> K
linear head after adaptive average pooling.

The five 2x2 max-pools of VGG take 32x32 to 1x1; a pool that would shrink a side below 1
(8x8 digits) is left out, so every input size of at least 1x1 works."""
from __future__ import annotations

import torch.nn as nn

from filterkd_ray.models import register_model

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, config: list, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        layers, c = [], input_shape[0]
        h, w = (input_shape[1], input_shape[2]) if len(input_shape) == 3 else (1, 1)
        for v in config:
            if v == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                       nn.ReLU(inplace=True)]
            c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg11")
def vgg11(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CONFIGS["vgg11"], num_classes, input_shape)


@register_model("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(CONFIGS["vgg16"], num_classes, input_shape)
