"""Small helpers shared by the backbone and the heads."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

__all__ = ["init_conv_linear", "check_head_features"]


def init_conv_linear(m: nn.Module) -> None:
    """Truncated-normal (std 0.02) linears and fan-out normal convs, zero biases (the SegFormer/SegNeXt scheme)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, mean=0.0, std=(2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def check_head_features(features: Sequence[torch.Tensor], in_channels: Sequence[int], head_name: str) -> None:
    """Raise a ValueError naming what a head expected when its feature list does not fit."""
    if len(features) != len(in_channels):
        raise ValueError(f"{head_name} expects {len(in_channels)} feature maps, got {len(features)}")
    got = tuple(f.shape[1] for f in features)
    if got != tuple(in_channels):
        raise ValueError(f"{head_name} expects feature channels {tuple(in_channels)}, got {got}")
