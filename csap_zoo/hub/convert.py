"""Converting foreign checkpoint layouts into csap-zoo segmentor state dicts, and telling the layouts apart.

Formats (the manifest's ``format`` field):
- ``csap-safetensors``: this package's own layout (``save_pretrained`` output);
- ``mscan-original``: an MSCAN ImageNet checkpoint, original SegNeXt or MMSegmentation layout (backbone only);
- ``mmseg-segnext``: an MMSegmentation SegNeXt segmentation checkpoint (``backbone.*`` + ``decode_head.*``).

Files are read by ``csap_zoo.models.serialization.read_state_dict`` (safetensors, or ``torch.load(weights_only=True)``,
which refuses pickled code) and loaded strictly by ``load_checkpoint_into``.

``convert_checkpoint`` (and ``csap-zoo convert``) never writes a folder with parameters the file did not
initialise, except where that is asked for: a checkpoint name (``segnext_tiny.ade20k``) promises a trained model, so
a file without a decode head is refused unless ``backbone_only=True``; a bare architecture name (``csap_tiny``)
takes a backbone-only file as an ImageNet initialisation, with a warning that the head is random.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import timm
import torch

from ..errors import ConversionError
from ..models.heads.ham import mmseg_checkpoint_filter_fn
from ..models.mscan import checkpoint_filter_fn as mscan_checkpoint_filter_fn
from ..models.registry import build_model, parse_model_name
from ..models.segmentor import Segmentor
from ..models.serialization import load_checkpoint_into, read_state_dict

__all__ = ["CHECKPOINT_FORMATS", "ConversionError", "convert_checkpoint", "convert_state_dict", "describe_checkpoint",
           "detect_format", "read_state_dict"]

CHECKPOINT_FORMATS = ("csap-safetensors", "mscan-original", "mmseg-segnext")
_CLASSIFIERS = ("decode_head.conv_seg.weight", "decode_head.classifier.weight")


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


def _has_head(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("decode_head.") for k in state)


def _file_classes(state: Dict[str, torch.Tensor]) -> Optional[int]:
    """The class count of the file's classifier, if it has one."""
    return next((int(state[k].shape[0]) for k in _CLASSIFIERS if k in state and state[k].dim()), None)


def detect_format(state: Dict[str, torch.Tensor]) -> str:
    """The layout of a state dict, from its keys: ``mmseg-segnext`` (an MMSegmentation SegNeXt model, its
    classifier named ``decode_head.conv_seg``), ``csap-safetensors`` (this package's ``backbone.stages_N.*`` keys,
    with or without ``decode_head.*``) or ``mscan-original`` (a bare MSCAN backbone, original or MMSegmentation
    naming, also under an MMSegmentation model's ``backbone.`` prefix without a head)."""
    if any(k.startswith("decode_head.conv_seg.") for k in state):
        return "mmseg-segnext"
    if _has_head(state):
        return "csap-safetensors"
    backbone = [k[len("backbone."):] for k in state if k.startswith("backbone.")]
    if backbone and any(k.startswith("stages_") for k in backbone):
        return "csap-safetensors"
    return "mscan-original"


def describe_checkpoint(state: Dict[str, torch.Tensor]) -> str:
    """What a state dict is, in words, for messages (e.g. "an MMSegmentation SegNeXt segmentation checkpoint
    (backbone + decode head, 150 classes)")."""
    fmt = detect_format(state)
    classes = _file_classes(state)
    head = f"backbone + decode head, {classes} classes" if classes else "backbone + decode head"
    if fmt == "mmseg-segnext":
        return f"an MMSegmentation SegNeXt segmentation checkpoint ({head})"
    if fmt == "csap-safetensors":
        if _has_head(state):
            return f"a csap-zoo segmentor state dict ({head})"
        return "a csap-zoo backbone state dict (no decode head)"
    if any(k.startswith("backbone.") for k in state):
        return "the backbone of an MMSegmentation model (backbone.* keys, no decode head)"
    return "an MSCAN ImageNet backbone checkpoint (no decode head)"


def convert_state_dict(state: Dict[str, torch.Tensor], fmt: str, model: Segmentor) -> Dict[str, torch.Tensor]:
    """Map a state dict in ``fmt`` onto ``model``'s keys (``backbone.*`` / ``decode_head.*``).

    ``mscan-original`` keeps the backbone only (a ``decode_head.*`` in the file is dropped): callers that must not
    lose a head check the file first, as ``convert_checkpoint`` does."""
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


def _backbone_part(state: Dict[str, torch.Tensor], fmt: str, model: Segmentor) -> Dict[str, torch.Tensor]:
    """Only the backbone of a file in ``fmt``, in ``model``'s keys."""
    if fmt == "csap-safetensors":
        part = {k: v for k, v in state.items() if k.startswith("backbone.")}
        if not part:
            raise ConversionError("the file has no backbone.* keys")
        return part
    if any(k.startswith("backbone.") for k in state):  # a segmentation model's file: drop its head
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    return convert_state_dict(state, "mscan-original", model)


def convert_checkpoint(
        source: Union[str, Path],
        destination: Union[str, Path],
        name: str,
        fmt: Optional[str] = None,
        *,
        backbone_only: bool = False,
) -> Path:
    """Convert a foreign checkpoint file into a ``save_pretrained`` folder for model ``name``; returns the folder.

    ``fmt``: the file's layout (one of ``CHECKPOINT_FORMATS``); by default it is detected from the keys
    (``detect_format``). Given, it overrides the detection, but it can never make a conversion drop a decode head
    the file has.

    Every parameter of the written model comes from the file (strictly loaded, classifier included), or the
    conversion is refused with a ``ConversionError`` and nothing is written. Exceptions, which warn that the head
    is random: ``backbone_only=True`` takes only the file's backbone (any file with one); and a bare architecture
    name (``csap_tiny``) given a backbone-only file (an ImageNet initialisation, like
    ``create_model("csap_tiny", pretrained=True)``).
    """
    arch_name, tag = parse_model_name(name)
    if fmt is not None and fmt not in CHECKPOINT_FORMATS:
        raise ConversionError(f"unknown checkpoint format {fmt!r}; known: {CHECKPOINT_FORMATS}")
    state = read_state_dict(source)
    detected = detect_format(state)
    fmt = fmt or detected
    what = f"{source} is {describe_checkpoint(state)}"
    has_head = _has_head(state)

    if not backbone_only and has_head and fmt == "mscan-original":
        raise ConversionError(
            f"{what}; --format mscan-original would take only its backbone and leave the decode head of {name} "
            f"random. Convert it as {detected} (drop --format), or pass --backbone-only (backbone_only=True) if "
            f"you want the backbone alone."
        )
    if not backbone_only and not has_head and tag is not None:
        raise ConversionError(
            f"{what}: converted to {name} it would leave the whole decode head random, while the name promises a "
            f"model trained on {tag}. Pass --backbone-only (backbone_only=True) to initialise only the backbone "
            f"(the head stays random and needs training), or name the bare architecture ({arch_name})."
        )
    head_from_file = has_head and not backbone_only
    classes = _file_classes(state) if head_from_file else None
    model = build_model(name, num_classes=None if tag is not None else classes)
    if classes is not None and classes != model.num_classes:
        raise ConversionError(
            f"{what}; {name} has {model.num_classes} classes, so its classifier would stay random. Name the "
            f"dataset it was trained on, or the bare architecture {arch_name} (which takes the file's classes)."
        )
    try:
        if head_from_file:
            converted = convert_state_dict(state, fmt, model)
            load_checkpoint_into(model, converted, str(source), classifier_may_differ=False)
        else:
            load_checkpoint_into(model, _backbone_part(state, fmt, model), str(source), backbone_only=True)
    except ConversionError as err:
        raise ConversionError(f"{what}, and it does not fit {name} (backbone {model.config.backbone}): "
                              f"{err}") from None
    if not head_from_file:
        warnings.warn(f"{name}: only the backbone comes from {source}; the decode head is randomly initialised "
                      f"and needs training", stacklevel=2)
    return model.save_pretrained(str(destination))
