"""Small helpers shared by the backbone and the heads."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

__all__ = ["capturing_graph", "init_conv_linear", "check_head_features", "conv1x1_over_resized_concat"]


def capturing_graph() -> bool:
    """True while torch.jit scripts or traces, torch.compile / torch.export capture, or an ONNX export runs: then
    data-dependent checks and kernels the capture cannot follow must stay out of the way."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    for name in ("is_compiling", "is_exporting"):
        probe = getattr(compiler, name, None)
        if probe is not None and probe():
            return True
    probe = getattr(getattr(torch, "onnx", None), "is_in_onnx_export", None)
    return bool(probe is not None and probe())


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


def conv1x1_over_resized_concat(
        features: Sequence[torch.Tensor],
        weight: torch.Tensor,
        size: Tuple[int, int],
        bias: Optional[torch.Tensor] = None,
        align_corners: bool = False,
) -> torch.Tensor:
    """``conv1x1(cat([resize(f, size) for f in features], dim=1), weight, bias)`` without building the concatenation.

    The 1x1 conv splits into one conv per feature over its slice of the input channels, and a bilinear resize mixes
    pixels with convex weights independently per channel, so it commutes with a bias-free 1x1 conv. Each feature
    is therefore projected where that is cheaper -- at its own (coarser) resolution when the projection does not
    widen it -- and the partial results are summed. Equal to the concatenating form up to float rounding.
    """
    total_in = sum(f.shape[1] for f in features)
    if weight.shape[1] != total_in:
        raise ValueError(f"1x1 conv weight expects {weight.shape[1]} input channels, features have {total_in}")
    out: Optional[torch.Tensor] = None
    start = 0
    for feature in features:
        part = weight[:, start:start + feature.shape[1]]
        start += feature.shape[1]
        if tuple(feature.shape[-2:]) == tuple(size):
            y = F.conv2d(feature, part)
        elif part.shape[0] <= part.shape[1]:
            y = F.interpolate(F.conv2d(feature, part), size=size, mode="bilinear", align_corners=align_corners)
        else:
            y = F.conv2d(F.interpolate(feature, size=size, mode="bilinear", align_corners=align_corners), part)
        out = y if out is None else out.add_(y)  # out is a fresh conv / resize output: safe to add in place
    assert out is not None
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
