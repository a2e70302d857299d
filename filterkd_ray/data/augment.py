"""Batched, seeded augmentation on the training device: no PIL, no loader workers.

`augment(x, kind, gen)` takes a float batch [B, C, H, W] and returns an augmented copy:
random crop from a zero-padded image (4 pixels, the CIFAR standard), horizontal flip with
probability 1/2, and optionally cutout. All random draws come from `gen`, so the same
generator state gives the same batch.
"""
from __future__ import annotations

import torch

AUGMENTS = ("none", "crop_flip", "crop_flip_cutout")
PAD = 4
CUTOUT = 8


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int = PAD) -> torch.Tensor:
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # [B,1,H,1]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # [B,1,1,W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int = CUTOUT) -> torch.Tensor:
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=gen.device).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= size // 2) & \
             ((xs - cx[:, None, None]).abs() <= size // 2)
    return x * (~inside)[:, None].to(x.dtype)


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    x = random_flip(random_crop(x, gen), gen)
    return cutout(x, gen) if kind == "crop_flip_cutout" else x
