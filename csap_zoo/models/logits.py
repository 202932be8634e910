"""A Segmentor seen as a plain ``x -> logits`` module.

Tracers, exporters, converters and timers call ``module(x)`` with one tensor; a Segmentor's forward takes options
(``upsample``, ``crop``). :class:`SegmentorLogits` fixes them, so the export code, the OpenVINO conversion and the
benchmarks share one wrapper instead of each keeping its own.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SegmentorLogits"]

_SEGMENTOR_ATTRIBUTES = ("decode_head", "forward_logits", "pad_mode")


class SegmentorLogits(nn.Module):
    """``x -> logits`` of a csap_zoo Segmentor with its forward options fixed.

    Args:
        model: the Segmentor (anything with its ``decode_head``, ``forward_logits`` and ``pad_mode``).
        upsample: logits at the input's resolution (default), or the head's stride-8 logits.
        crop: with ``upsample=False``, ``False`` returns the raw logits of the whole prepared (padded) input, as
            ``model(x, upsample=False, crop=False)`` does.
        branch_free: skip the input checks and run the padded forward, which has no Python branch on the input
            size, so that traced and exported graphs stay valid at other sizes (with ``crop=False``: the raw
            logits of the whole prepared input). Exported graphs cannot raise: validate inputs before calling
            them.
    """

    def __init__(self, model: nn.Module, upsample: bool = True, crop: bool = True,
                 branch_free: bool = False) -> None:
        super().__init__()
        for attr in _SEGMENTOR_ATTRIBUTES:
            if not hasattr(model, attr):
                raise ValueError(f"{type(self).__name__} needs a csap_zoo Segmentor (with {attr!r}); "
                                 f"got {type(model).__name__}")
        if not crop and upsample:
            raise ValueError("crop=False returns the raw logits: pass upsample=False with it")
        self.model = model
        self.upsample = upsample
        self.crop = crop
        self.branch_free = branch_free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_free:
            if not self.crop:
                model = self.model
                return model.decode_head(model.forward_features(model.prepare_input(x)))
            return self.model.forward_logits(x, self.upsample)
        return self.model(x, upsample=self.upsample, crop=self.crop)
