"""Parameter and multiply-accumulate counts of segmentors, backbone and head apart.

MACs come from an independent counter (fvcore by default, torchprofile as an alternative), both of which count one
multiply-accumulate as one operation; in segmentation papers that number is called "GFLOPs". torchprofile is
optional (the ``dev`` extra installs it). The quick shape-only count that model cards use is
``csap_zoo.models.flops.estimate_gmacs``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn as nn

from ..models.flops import estimate_gmacs
from ..models.registry import build_model
from ..models.segmentor import Segmentor

__all__ = ["ComplexityReport", "COUNTERS", "count_macs", "estimate_gmacs", "measure_complexity"]

COUNTERS = ("fvcore", "torchprofile")


def _fvcore_analysis(module: nn.Module, inputs: Sequence[Any]) -> Any:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as err:
        raise ImportError("counting MACs with fvcore needs it installed: pip install 'csap-zoo[flops]'") from err
    analysis = FlopCountAnalysis(module, tuple(inputs))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def count_macs(module: nn.Module, inputs: Sequence[Any], counter: str = "fvcore") -> int:
    """Multiply-accumulates of one forward call ``module(*inputs)``."""
    if counter == "fvcore":
        return int(_fvcore_analysis(module, inputs).total())
    if counter == "torchprofile":
        try:
            from torchprofile import profile_macs
        except ImportError as err:
            raise ImportError("counting MACs with torchprofile needs `pip install torchprofile`") from err
        return int(profile_macs(module, tuple(inputs)))
    raise ValueError(f"unknown counter {counter!r}; choose one of {COUNTERS}")


class _HeadOnFeatures(nn.Module):
    """Calls a head on a list of features given as separate arguments (tracers want flat tensor inputs)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.head(list(features))


class _BackboneFeatures(nn.Module):
    def __init__(self, model: Segmentor) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple:
        return tuple(self.model.forward_features(x))


@dataclass
class ComplexityReport:
    """Sizes in millions of parameters, compute in GMACs, for one input size and class count."""

    name: str
    height: int
    width: int
    num_classes: int
    counter: str
    params_m: float
    backbone_params_m: float
    head_params_m: float
    backbone_gmacs: float
    head_gmacs: float
    upsample_gmacs: float

    @property
    def gmacs(self) -> float:
        """Backbone + head up to the head's stride-8 logits (the convention of segmentation FLOP tables)."""
        return self.backbone_gmacs + self.head_gmacs

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "gmacs": self.gmacs}


def _millions(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@torch.no_grad()
def measure_complexity(
        name: str,
        height: int = 512,
        width: int = 512,
        num_classes: int = 150,
        counter: str = "fvcore",
        label: str = "",
        **model_kwargs: Any,
) -> ComplexityReport:
    """Params and GMACs of ``build_model(name)`` on a 1x3xHxW input, backbone and head counted apart.

    ``upsample_gmacs`` is what the counter charges for resizing the logits to the input size; it is reported but
    not part of :attr:`ComplexityReport.gmacs`. ``model_kwargs`` go to ``build_model`` (e.g. head options);
    ``label`` names such a variant in the report (default: the model name).
    """
    model = build_model(name, num_classes=num_classes, **model_kwargs).eval()
    x = torch.randn(1, model.in_chans, height, width)
    if counter == "fvcore":
        total, backbone, head = _fvcore_by_part(model, x)
    else:
        padded = model.prepare_input(x)
        features = model.forward_features(padded)
        backbone = count_macs(_BackboneFeatures(model), [padded], counter)
        head = count_macs(_HeadOnFeatures(model.decode_head), features, counter)
        total = count_macs(model, [x], counter)
    return ComplexityReport(
        name=label or name, height=height, width=width, num_classes=num_classes, counter=counter,
        params_m=_millions(model), backbone_params_m=_millions(model.backbone),
        head_params_m=_millions(model.decode_head),
        backbone_gmacs=backbone / 1e9, head_gmacs=head / 1e9, upsample_gmacs=(total - backbone - head) / 1e9,
    )


def _fvcore_by_part(model: Segmentor, x: torch.Tensor) -> Tuple[int, int, int]:
    """Total, backbone and head MACs from a single fvcore trace."""
    by_module = _fvcore_analysis(model, [x]).by_module()
    return int(by_module[""]), int(by_module["backbone"]), int(by_module["decode_head"])
