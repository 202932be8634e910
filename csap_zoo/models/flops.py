"""GMACs of a model from its shapes alone: what model cards and the catalog print.

The count runs on a meta-device copy (no arithmetic, a fraction of a second) with torch's FlopCounterMode, which
charges convolutions and matrix products; elementwise work is not counted. The independent, fuller counters
(fvcore, torchprofile) used for the paper's tables are in ``csap_zoo.tools.complexity``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["estimate_gmacs"]


def estimate_gmacs(model: nn.Module, height: int = 512, width: int = 512) -> float:
    """Quick GMACs of convolutions and matrix products (torch's FlopCounterMode) on a shape-only (meta) copy of
    ``model``: no arithmetic runs, so it takes a fraction of a second. Elementwise work is not counted, so it reads
    a little below ``csap_zoo.tools.complexity.measure_complexity``'s fvcore figures."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    in_chans = getattr(model, "in_chans", 3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, in_chans, height, width, device="meta"))
    return counter.get_total_flops() / 2e9
