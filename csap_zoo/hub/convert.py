"""Converting foreign checkpoint layouts into csap-zoo segmentor state dicts, and telling the layouts apart.

Formats (the manifest's ``format`` field):
- ``csap-safetensors``: this package's own layout (``save_pretrained`` output);
- ``mscan-original``: an MSCAN ImageNet checkpoint, original SegNeXt or MMSegmentation layout (backbone only);
- ``mmseg-segnext``: an MMSegmentation SegNeXt segmentation checkpoint (``backbone.*`` + ``decode_head.*``).

Files are read by ``csap_zoo.models.serialization.read_state_dict`` (safetensors, or ``torch.load(weights_only=True)``,
which refuses pickled code) and loaded strictly by ``load_checkpoint_into``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Union

import timm
import torch

from ..errors import ConversionError
from ..models.heads.ham import mmseg_checkpoint_filter_fn
from ..models.mscan import checkpoint_filter_fn as mscan_checkpoint_filter_fn
from ..models.registry import build_model, parse_model_name
from ..models.segmentor import Segmentor
from ..models.serialization import load_checkpoint_into, read_state_dict

__all__ = ["CHECKPOINT_FORMATS", "ConversionError", "convert_checkpoint", "convert_state_dict", "detect_format",
           "read_state_dict"]

CHECKPOINT_FORMATS = ("csap-safetensors", "mscan-original", "mmseg-segnext")


def _mscan_backbone_keys(backbone_state: Dict[str, torch.Tensor], model: Segmentor) -> Dict[str, torch.Tensor]:
    """Original/MMSeg MSCAN keys -> the keys of the segmentor's features-only backbone."""
    with torch.device("meta"):
        reference = timm.create_model(model.config.backbone, num_classes=0, in_chans=model.in_chans)
    try:
        converted = mscan_checkpoint_filter_fn(backbone_state, reference)
    except RuntimeError as err:  # the filter's key check: the file is not an MSCAN of this variant
        raise ConversionError(str(err)) from None
    # timm's features-only wrapper flattens the top-level `stages` Sequential: stages.0.x -> stages_0.x
    return {re.sub(r"^stages\.(\d+)\.", r"stages_\1.", k): v for k, v in converted.items()}


def detect_format(state: Dict[str, torch.Tensor]) -> str:
    """The layout of a state dict, from its keys: ``mmseg-segnext`` (an MMSegmentation SegNeXt model, its
    classifier named ``decode_head.conv_seg``), ``csap-safetensors`` (this package's ``backbone.*`` +
    ``decode_head.*``) or ``mscan-original`` (a bare MSCAN backbone, original or MMSegmentation naming)."""
    if any(k.startswith("decode_head.conv_seg.") for k in state):
        return "mmseg-segnext"
    if any(k.startswith(("backbone.", "decode_head.")) for k in state):
        return "csap-safetensors"
    return "mscan-original"


def convert_state_dict(state: Dict[str, torch.Tensor], fmt: str, model: Segmentor) -> Dict[str, torch.Tensor]:
    """Map a state dict in ``fmt`` onto ``model``'s keys (``backbone.*`` / ``decode_head.*``)."""
    if fmt == "csap-safetensors":
        return dict(state)
    if fmt == "mscan-original":
        if not model.config.backbone.startswith("mscan_"):
            raise ConversionError(f"an MSCAN checkpoint cannot initialise backbone {model.config.backbone!r}")
        backbone = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
        return {f"backbone.{k}": v for k, v in _mscan_backbone_keys(backbone, model).items()}
    if fmt == "mmseg-segnext":
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}
        if not backbone or not head:
            raise ConversionError("an MMSegmentation SegNeXt checkpoint needs backbone.* and decode_head.* keys; "
                                  f"found prefixes {sorted({k.split('.', 1)[0] for k in state})}")
        out = {f"backbone.{k}": v for k, v in _mscan_backbone_keys(backbone, model).items()}
        out.update({f"decode_head.{k}": v for k, v in mmseg_checkpoint_filter_fn(head).items()})
        return out
    raise ConversionError(f"unknown checkpoint format {fmt!r}; known: {CHECKPOINT_FORMATS}")


def convert_checkpoint(
        source: Union[str, Path],
        destination: Union[str, Path],
        name: str,
        fmt: str,
) -> Path:
    """Convert a foreign checkpoint file into a ``save_pretrained`` folder for model ``name``.

    ``mscan-original`` files initialise the backbone of ``name`` (its head stays random); ``mmseg-segnext`` files
    give a complete SegNeXt model.
    """
    parse_model_name(name)
    state = read_state_dict(source)
    model = build_model(name)
    load_checkpoint_into(model, convert_state_dict(state, fmt, model), str(source),
                         backbone_only=fmt == "mscan-original")
    return model.save_pretrained(str(destination))
