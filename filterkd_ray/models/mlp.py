"""The paper's toy network: an MLP with two hidden layers of 128 ReLU units."""
import math

import torch.nn as nn

from filterkd_ray.models import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        layers, width = [nn.Flatten()], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


@register_model("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes)
