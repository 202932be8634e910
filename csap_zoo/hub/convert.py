"""Reading checkpoint files safely and converting foreign layouts into csap-zoo segmentor state dicts.

Formats (the manifest's ``format`` field):
- ``csap-safetensors``: this package's own layout (``save_pretrained`` output);
- ``mscan-original``: an MSCAN ImageNet checkpoint, original SegNeXt or MMSegmentation layout (backbone only);
- ``mmseg-segnext``: an MMSegmentation SegNeXt segmentation checkpoint (``backbone.*`` + ``decode_head.*``).

``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``, which
refuses pickled code.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file

from ..errors import ConversionError
from ..models.heads.ham import mmseg_checkpoint_filter_fn
from ..models.mscan import checkpoint_filter_fn as mscan_checkpoint_filter_fn
from ..models.segmentor import Segmentor

__all__ = ["CHECKPOINT_FORMATS", "ConversionError", "convert_state_dict", "read_state_dict"]

CHECKPOINT_FORMATS = ("csap-safetensors", "mscan-original", "mmseg-segnext")


def read_state_dict(path: Union[str, Path, bytes], name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file loaded with weights_only=True), unwrapped from
    ``state_dict`` / ``model`` containers.

    ``path`` may also be the file's contents (bytes already read and hash-checked, see ``fetch_verified``); ``name``
    is then the file's name, whose suffix picks the format and which messages show.
    """
    contents = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else None
    path = Path(name or "checkpoint") if contents is not None else Path(path)
    if contents is None and not path.is_file():
        raise ConversionError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)) if contents is None else load_safetensors_bytes(contents)
        except Exception as err:
            raise ConversionError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        data: Any = torch.load(path if contents is None else io.BytesIO(contents), map_location="cpu",
                               weights_only=True)
    except Exception as err:
        raise ConversionError(
            f"{path} could not be read as a weights-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pickled objects other than tensors are refused "
            f"for safety; re-save the file's state_dict, or convert it to safetensors."
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return data


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
    from ..models.registry import build_model, parse_model_name
    from .pretrained import load_checkpoint_into

    parse_model_name(name)
    state = read_state_dict(source)
    model = build_model(name)
    load_checkpoint_into(model, convert_state_dict(state, fmt, model), str(source),
                         backbone_only=fmt == "mscan-original")
    return model.save_pretrained(str(destination))
