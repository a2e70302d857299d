"""Model registry (timm style): `@register_model("name")` on a builder
`fn(num_classes, input_shape) -> nn.Module`, and `create_model(name, num_classes, input_shape)`.
Every registered model is tested forward and backward in tests/test_models.py.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from filterkd_ray import InputError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn):
        MODELS[name] = fn
        return fn
    return wrap


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    if name not in MODELS:
        raise InputError(f"model: unknown {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))


from filterkd_ray.models import mlp as _mlp  # noqa: E402,F401
from filterkd_ray.models import resnet as _resnet, preact as _preact, vgg as _vgg, mobilenet as _mobilenet, fastnet as _fastnet  # noqa: E402,F401,E501
