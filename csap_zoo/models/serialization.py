"""The segmentor's folder format, written and read: ``config.json`` + ``model.safetensors`` + a README model card.

``save_pretrained`` writes the folder atomically; ``model_from_folder`` reads one back. The model card is
``csap_zoo.models.card``, the Hub transfer (``push_to_hub``, a Hub repository's folder)
``csap_zoo.models.hub_transfer``, and ``csap_zoo.models.pretrained.PretrainedMixin`` gives a model class all of these
as methods, so the format has one home and the model class does not reach up into the hub for it.

Loading is strict: a missing or unexpected key, a shape mismatch or a tensor of the wrong kind (integer or bool
where the model holds floats, or the reverse) is an error. The one exception is the classifier when ``num_classes``
differs from the checkpoint's: it is re-initialised, with a warning. A saved folder must be consistent: its
config.json is validated field by field (``csap_zoo.errors.ConfigError``), its class count must match its
weights, and the model it describes is checked against the weights file on the meta device before any memory is
allocated. Reading a local folder never touches the network. Checkpoint files are read with safetensors, or with
``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, ConversionError
from ..fileio import atomic_folder, atomic_write, clean_stale_temp
from ..validation import check_value, require_mapping
from ..version import __version__
from .architectures import get_architecture
from .card import render_model_card
from .config import DataConfig, SegmentorConfig
from .fused import is_fused

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "MODEL_CARD_NAME", "ModelFolder", "WEIGHTS_NAME", "load_checkpoint_into",
    "model_config_dict", "model_from_folder", "read_model_folder", "read_state_dict", "reset_classifier",
    "save_pretrained",
]

PathLike = Union[str, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config.json larger than this is refused unread
_CONFIG_KEYS = ("format_version", "csap_zoo_version", "model", "data", "metrics")
_CLASSIFIER_PREFIX = "decode_head.classifier."
_CLASSIFIER_WEIGHT = _CLASSIFIER_PREFIX + "weight"


# ---------------------------------------------------------------------- reading weights, strictly
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


def _listed(items: List[str]) -> str:
    return f"{items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _fit_state(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], source: str, num_classes: int,
               backbone_only: bool, classifier_may_differ: bool) -> Dict[str, torch.Tensor]:
    """``state`` reduced to what loads into a model whose state dict is ``own`` (real or meta tensors), or a
    ConversionError saying what does not fit; nothing is copied."""
    state = dict(state)
    if backbone_only:
        state.update({k: v for k, v in own.items() if k.startswith("decode_head.")})
    # A tensor of another kind (int/bool for a float parameter, or a float for an integer counter) would be cast
    # silently by load_state_dict: integer weights give a model that predicts class 0 everywhere.
    wrong_kind = [f"{k}: file {_dtype_name(v.dtype)}, model {_dtype_name(own[k].dtype)}" for k, v in state.items()
                  if k in own and v.is_floating_point() != own[k].is_floating_point()]
    if wrong_kind:
        raise ConversionError(f"{source} holds tensors of the wrong kind (weights must be floating point, counters "
                              f"integer): {_listed(wrong_kind)}. Is it a weights file at all?")
    # only a different class count (first dimension) excuses a classifier mismatch
    skipped = [k for k in state if classifier_may_differ and k.startswith(_CLASSIFIER_PREFIX) and k in own
               and state[k].dim() >= 1 and state[k].dim() == own[k].dim()
               and state[k].shape[0] != own[k].shape[0] and state[k].shape[1:] == own[k].shape[1:]]
    if skipped:
        warnings.warn(
            f"{source}: the checkpoint's classifier has {state[skipped[0]].shape[0]} classes, the model "
            f"{num_classes}; the classifier is re-initialised and needs fine-tuning.", stacklevel=4,
        )
        for key in skipped:
            del state[key]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ConversionError(f"{source} does not fit the model; shape mismatches: {mismatched[:5]}"
                              + (" ..." if len(mismatched) > 5 else ""))
    missing = [k for k in own if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConversionError(
            f"{source} does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}. Is it a checkpoint of this architecture?"
        )
    return state


def load_checkpoint_into(model: nn.Module, state: Dict[str, torch.Tensor], source: str,
                         backbone_only: bool = False, classifier_may_differ: bool = True) -> None:
    """Strictly load ``state`` into ``model``: every key, shape and kind (floating or integer) must match.

    ``backbone_only``: the checkpoint holds backbone weights only; the head keeps its own (fresh) weights.
    ``classifier_may_differ``: a classifier of another class count is skipped with a warning (the model keeps
    its fresh one); False makes it a shape mismatch like any other.
    """
    state = _fit_state(model.state_dict(), state, source, model.num_classes, backbone_only, classifier_may_differ)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # _fit_state has refused them



# ---------------------------------------------------------------------- writing a folder
def model_config_dict(model: Any, metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything config.json records: the architecture config, the data config and metrics."""
    if model.config is None:
        raise ValueError("this segmentor was not built from a SegmentorConfig (csap_zoo.create_model does that), "
                         "so it cannot be saved in a reloadable form")
    return {
        "format_version": FORMAT_VERSION,
        "csap_zoo_version": __version__,
        "model": model.config.to_dict(),
        "data": model.data_config.to_dict(),
        "metrics": metrics or {},
    }



def save_pretrained(
        model: Any,
        save_directory: Union[str, Path],
        metrics: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        license: Optional[str] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

    ``license`` is the model card's Hugging Face license identifier (see ``render_model_card`` for the default).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type, halving the file; loading
    copies them back into the model's own (fp32) parameters.

    The folder is assembled in a temporary sibling and moved into place, so a failure never leaves a
    half-written model folder; an existing folder's three files are replaced, other files are kept. Files and a
    new folder get the permissions the umask gives; staging folders of earlier saves to the same destination that
    were killed midway are removed (see ``csap_zoo.fileio.clean_stale_temp`` for when one counts as abandoned).
    """
    if is_fused(model):
        raise ValueError("this model was optimised for inference (folded, fused layers) and no longer has the "
                         "architecture's checkpoint layout; save the original model instead of the "
                         "optimize_for_inference() copy")
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    metrics = model.metrics if metrics is None else metrics
    config = model_config_dict(model, metrics)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    clean_stale_temp(target.parent, re.escape(target.name))  # staging folders a killed save left behind
    with atomic_folder(target, (WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME), fsync=True) as staging:
        # safetensors writes a 0600 file of its own; atomic_write gives it the usual permissions. One metadata
        # entry: safetensors orders several in a per-process random order, so the same weights would not give
        # the same bytes (and sha256) twice; config.json records the csap-zoo version.
        atomic_write(staging / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / MODEL_CARD_NAME).write_text(render_model_card(model, metrics, repo_id, license=license))
    return target


# ---------------------------------------------------------------------- reading a folder
class ModelFolder(NamedTuple):
    """The validated contents of a save_pretrained folder (its weights file not yet read)."""

    config: SegmentorConfig
    data_config: DataConfig
    metrics: Dict[str, Any]
    config_path: Path
    weights_path: Path


def _parse_config_file(config_path: Path) -> Dict[str, Any]:
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than {MAX_CONFIG_BYTES} bytes ({size}); not a config written by "
                          f"save_pretrained", source=str(config_path))
    try:
        saved = json.loads(config_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConversionError(f"{config_path} is not UTF-8 text: {err}") from None
    except RecursionError:
        raise ConversionError(f"{config_path} is not valid JSON: nested too deeply") from None
    except ValueError as err:  # json.JSONDecodeError, and integers longer than Python converts
        raise ConversionError(f"{config_path} is not valid JSON: {err}") from None
    saved = require_mapping(saved)
    version = saved.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION or "model" not in saved:
        raise ConversionError(f"{config_path} is not a csap-zoo config (format_version {FORMAT_VERSION} expected)")
    unknown = [k for k in saved if k not in _CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"is not a known entry; a config.json holds {list(_CONFIG_KEYS)}", field=unknown[0])
    try:
        check_value(saved.get("csap_zoo_version"), Optional[str])
    except ConfigError as err:
        raise err.located(prefix="csap_zoo_version") from None
    return dict(saved)


def read_model_folder(folder: Path) -> ModelFolder:
    """The validated contents of a save_pretrained folder (its weights are not read)."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ConversionError(f"{folder} is not a csap-zoo model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                              f"(written by save_pretrained)")
    section = None
    try:
        saved = _parse_config_file(config_path)
        section = "model"
        config = SegmentorConfig.from_dict(saved["model"])
        section = "data"
        data_config = DataConfig.from_dict(saved.get("data", {}))
        section = "metrics"
        metrics = dict(require_mapping(saved.get("metrics", {})))
        section = None
        try:
            get_architecture(config.architecture)
        except ValueError as err:
            raise ConfigError(f"must name a registered architecture ({err})", field="model.architecture") from None
        names = data_config.class_names
        if names is not None and len(names) != config.num_classes:
            raise ConfigError(f"lists {len(names)} class names for model.num_classes={config.num_classes}",
                              field="data.class_names")
    except ConfigError as err:
        raise err.located(str(config_path), section) from None
    return ModelFolder(config, data_config, metrics, config_path, weights_path)


def _check_class_count(contents: ModelFolder, state: Dict[str, torch.Tensor]) -> None:
    weight = state.get(_CLASSIFIER_WEIGHT)
    saved = contents.config.num_classes
    if weight is not None and weight.dim() >= 1 and weight.shape[0] != saved:
        raise ConversionError(
            f"{contents.config_path.parent} is inconsistent: {contents.config_path.name} says num_classes={saved} "
            f"but {contents.weights_path.name} holds a classifier of {weight.shape[0]} classes "
            f"({_CLASSIFIER_WEIGHT} {tuple(weight.shape)}). Re-save the model with save_pretrained, or load the "
            f"weights file alone with create_model(name, pretrained=path_to_{contents.weights_path.name})."
        )


def _build_from_folder(cls: Any, contents: ModelFolder, meta: bool) -> Any:
    """The folder's model, never with pretrained backbone weights; a config the model code refuses is a
    ConfigError of the file."""
    try:
        if not meta:
            return cls.from_config(contents.config, pretrained_backbone=False, data_config=contents.data_config)
        with torch.device("meta"):
            return cls.from_config(contents.config, pretrained_backbone=False)
    except NotImplementedError:
        if meta:
            return None
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"does not describe a model that can be built: {type(err).__name__}: {first_line}",
                          field="model", source=str(contents.config_path)) from None


def model_from_folder(cls: Any, folder: Path, source: str, num_classes: Optional[int]) -> Any:
    """A ``cls`` model (a Segmentor) rebuilt from a save_pretrained folder and strictly loaded with its weights."""
    contents = read_model_folder(folder)
    state = read_state_dict(contents.weights_path)
    _check_class_count(contents, state)
    # The backbone is built without pretrained weights (they are in the folder's own file), first on the meta
    # device: a config that describes anything but the weights file is refused before memory is allocated.
    probe = _build_from_folder(cls, contents, meta=True)
    if probe is not None:  # None: a module that computes at construction and cannot be built on meta
        _fit_state(probe.state_dict(), state, source, probe.num_classes, backbone_only=False,
                   classifier_may_differ=False)
    model = _build_from_folder(cls, contents, meta=False)
    assert model is not None
    load_checkpoint_into(model, state, source, classifier_may_differ=False)
    model.metrics = contents.metrics
    reset_classifier(model, num_classes, source)
    return model



def reset_classifier(model: Any, num_classes: Optional[int], source: str) -> None:
    """Give ``model`` a fresh classifier of ``num_classes`` classes, with a warning that it needs fine-tuning,
    when that differs from the checkpoint's (``model.num_classes`` as loaded from ``source``); else nothing."""
    if num_classes is None or num_classes == model.num_classes:
        return
    warnings.warn(f"{source}: checkpoint has {model.num_classes} classes, num_classes={num_classes}; the classifier "
                  f"is re-initialised and needs fine-tuning.", stacklevel=4)
    model.reset_classifier(num_classes)
