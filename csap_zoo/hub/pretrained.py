"""The public factory with weights: ``create_model(name, pretrained=...)`` and ``from_pretrained(dir_or_repo)``.

Where weights come from:
- ``create_model("csap_tiny.ade20k", pretrained=True)``: the manifest entry of that name (a full checkpoint: the
  backbone is never downloaded separately);
- ``create_model("csap_tiny", pretrained=True, num_classes=5)``: the ImageNet checkpoint of the architecture's
  backbone, with a fresh head;
- ``pretrained="path/to/file_or_folder"``: a local state dict file or a ``save_pretrained`` folder;
- ``create_model("hf-hub:org/repo")`` / ``from_pretrained("org/repo")``: a ``save_pretrained`` folder on the Hub.

Loading is strict: a missing or unexpected key, a shape mismatch or a tensor of the wrong kind (integer or bool
where the model holds floats, or the reverse) is an error. The one exception is the classifier when ``num_classes``
differs from the checkpoint's: it is re-initialised, with a warning. A saved folder must be consistent: its
config.json is validated field by field (``csap_zoo.validation.ConfigError``), its class count must match its
weights, and the model it describes is checked against the weights file on the meta device before any memory is
allocated. Reading a local folder never touches the network.
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Union

import torch

from ..models.registry import build_model, get_architecture, parse_model_name
from ..models.segmentor import MAX_CLASSES, DataConfig, Segmentor, SegmentorConfig
from ..validation import ConfigError, check_value, require_mapping
from .convert import ConversionError, convert_state_dict, read_state_dict
from .download import CheckpointError, CheckpointUnavailableError, fetch_verified, is_offline
from .manifest import Checkpoint, Manifest, default_manifest
from .serialization import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME

__all__ = ["create_model", "from_pretrained", "load_checkpoint_into"]

PathLike = Union[str, os.PathLike]
_CLASSIFIER_PREFIX = "decode_head.classifier."
_CLASSIFIER_WEIGHT = _CLASSIFIER_PREFIX + "weight"
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config.json larger than this is refused unread
_CONFIG_KEYS = ("format_version", "csap_zoo_version", "model", "data", "metrics")


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


def load_checkpoint_into(model: Segmentor, state: Dict[str, torch.Tensor], source: str,
                         backbone_only: bool = False, classifier_may_differ: bool = True) -> None:
    """Strictly load ``state`` into ``model``: every key, shape and kind (floating or integer) must match.

    ``backbone_only``: the checkpoint holds backbone weights only; the head keeps its own (fresh) weights.
    ``classifier_may_differ``: a classifier of another class count is skipped with a warning (the model keeps
    its fresh one); False makes it a shape mismatch like any other.
    """
    state = _fit_state(model.state_dict(), state, source, model.num_classes, backbone_only, classifier_may_differ)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # _fit_state has refused them


def _data_config_from_checkpoint(checkpoint: Checkpoint) -> DataConfig:
    return DataConfig(mean=checkpoint.mean, std=checkpoint.std, train_crop=checkpoint.train_crop,
                      test_size=checkpoint.test_size, dataset=checkpoint.dataset)


class _ModelFolder(NamedTuple):
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


def _read_model_folder(folder: Path) -> _ModelFolder:
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
    return _ModelFolder(config, data_config, metrics, config_path, weights_path)


def _check_class_count(contents: _ModelFolder, state: Dict[str, torch.Tensor]) -> None:
    weight = state.get(_CLASSIFIER_WEIGHT)
    saved = contents.config.num_classes
    if weight is not None and weight.dim() >= 1 and weight.shape[0] != saved:
        raise ConversionError(
            f"{contents.config_path.parent} is inconsistent: {contents.config_path.name} says num_classes={saved} "
            f"but {contents.weights_path.name} holds a classifier of {weight.shape[0]} classes "
            f"({_CLASSIFIER_WEIGHT} {tuple(weight.shape)}). Re-save the model with save_pretrained, or load the "
            f"weights file alone with create_model(name, pretrained=path_to_{contents.weights_path.name})."
        )


def _build_from_folder(contents: _ModelFolder, meta: bool) -> Optional[Segmentor]:
    """The folder's model, never with pretrained backbone weights; a config the model code refuses is a
    ConfigError of the file."""
    try:
        if not meta:
            return Segmentor.from_config(contents.config, pretrained_backbone=False, data_config=contents.data_config)
        with torch.device("meta"):
            return Segmentor.from_config(contents.config, pretrained_backbone=False)
    except NotImplementedError:
        if meta:
            return None
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"does not describe a model that can be built: {type(err).__name__}: {first_line}",
                          field="model", source=str(contents.config_path)) from None


def _model_from_folder(folder: Path, source: str, num_classes: Optional[int]) -> Segmentor:
    contents = _read_model_folder(folder)
    state = read_state_dict(contents.weights_path)
    _check_class_count(contents, state)
    # The backbone is built without pretrained weights (they are in the folder's own file), first on the meta
    # device: a config that describes anything but the weights file is refused before memory is allocated.
    probe = _build_from_folder(contents, meta=True)
    if probe is not None:  # None: a module that computes at construction and cannot be built on meta
        _fit_state(probe.state_dict(), state, source, probe.num_classes, backbone_only=False,
                   classifier_may_differ=False)
    model = _build_from_folder(contents, meta=False)
    assert model is not None
    load_checkpoint_into(model, state, source, classifier_may_differ=False)
    model.metrics = contents.metrics
    if num_classes is not None and num_classes != model.num_classes:
        _warn_reset(source, model.num_classes, num_classes)
        model.reset_classifier(num_classes)
    return model


def _warn_reset(source: str, old: int, new: int) -> None:
    warnings.warn(f"{source}: checkpoint has {old} classes, num_classes={new}; the classifier is re-initialised "
                  f"and needs fine-tuning.", stacklevel=4)


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hub endpoint cannot be reached (one TCP connection attempt), or None when it answers.

    huggingface_hub retries a refused connection for about half a minute; this single attempt lets an
    unreachable Hub fail (or fall back to the cache) at once. Behind a proxy the endpoint is not probed.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    parts = urlsplit(constants.ENDPOINT)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{parts.hostname}:{port}: {err.strerror or err}"
    return None


def _download_hf_folder(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                        local_files_only: Optional[bool]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline() if local_files_only is None else local_files_only
    if offline:
        reason = ("offline mode is on (HF_HUB_OFFLINE or CSAP_ZOO_OFFLINE is set)" if local_files_only is None
                  else "local_files_only=True")
    else:
        unreachable = _hub_unreachable()
        # like huggingface_hub without a network: the cached copy, if there is one
        offline = unreachable is not None
        reason = f"the Hub is unreachable ({unreachable})"
    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                      local_files_only=offline)) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except LocalEntryNotFoundError:
        if not offline:
            reason = "the Hub is unreachable"
        advice = ("Download it once while online (unset HF_HUB_OFFLINE / CSAP_ZOO_OFFLINE), or point HF_HUB_CACHE "
                  "at a cache that holds it." if "offline mode" in reason else
                  "Check the network (or HF_ENDPOINT) and retry, or point HF_HUB_CACHE at a cache that holds it; "
                  "set HF_HUB_OFFLINE=1 to use cached models without trying the network.")
        raise CheckpointUnavailableError(f"hf-hub:{repo_id} is not in the local cache and {reason}. {advice}") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise CheckpointUnavailableError(f"hf-hub:{repo_id} is not a csap-zoo model repository "
                                         f"({type(err).__name__}); it needs {CONFIG_NAME} and {WEIGHTS_NAME}") from None
    return paths[0].parent


def from_pretrained(
        name_or_path: PathLike,
        num_classes: Optional[int] = None,
        revision: Optional[str] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: Optional[bool] = None,
) -> Segmentor:
    """Load a model saved with ``save_pretrained``: a local folder, or a Hub repo id (``org/name``).

    The saved config rebuilds the exact architecture (no backbone weights are downloaded); ``num_classes``
    different from the saved one re-initialises the classifier with a warning.
    """
    text = os.fspath(name_or_path)
    if text.startswith("hf-hub:"):
        text = text[len("hf-hub:"):]
    folder = Path(text)
    if folder.is_dir():
        return _model_from_folder(folder, str(folder), num_classes)
    if folder.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise ConversionError(f"{text} is neither a model folder nor a Hub repo id of the form 'org/name'")
    local = _download_hf_folder(text, revision, cache_dir, local_files_only)
    return _model_from_folder(local, f"hf-hub:{text}", num_classes)


def _from_local_pretrained(name: str, path: Path, num_classes: Optional[int], build_kwargs: Dict[str, Any]) -> Segmentor:
    if path.is_dir():
        model = _model_from_folder(path, str(path), num_classes)
        wanted = parse_model_name(name)[0]
        if model.config.architecture != wanted:
            raise ConversionError(f"{path} holds a {model.config.architecture} model, not {wanted}; load it with "
                                  f"csap_zoo.from_pretrained({str(path)!r})")
        return model
    if not path.is_file():
        raise ConversionError(f"pretrained={str(path)!r}: no such file or folder")
    state = read_state_dict(path)
    saved_classes = next((v.shape[0] for k, v in state.items()
                          if k in ("decode_head.classifier.weight", "decode_head.conv_seg.weight") and v.dim()), None)
    if saved_classes is not None and not 1 <= saved_classes <= MAX_CLASSES:
        raise ConversionError(f"{path}: its classifier has {saved_classes} classes; at most {MAX_CLASSES} are "
                              f"supported")
    model = build_model(name, num_classes=saved_classes or num_classes, **build_kwargs)
    fmt = "mmseg-segnext" if any(k.startswith("decode_head.conv_seg.") for k in state) else "csap-safetensors"
    if not any(k.startswith(("backbone.", "decode_head.")) for k in state):
        fmt = "mscan-original"  # a bare backbone checkpoint
    load_checkpoint_into(model, convert_state_dict(state, fmt, model), str(path),
                         backbone_only=fmt == "mscan-original")
    if num_classes is not None and num_classes != model.num_classes:
        _warn_reset(str(path), model.num_classes, num_classes)
        model.reset_classifier(num_classes)
    return model


def create_model(
        name: str,
        pretrained: Union[bool, PathLike] = False,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        backbone: Optional[str] = None,
        backbone_args: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: Optional[bool] = None,
        manifest: Optional[Manifest] = None,
        **overrides: Any,
) -> Segmentor:
    """Build a segmentor by name, optionally with weights.

    Args:
        name: ``arch`` or ``arch.dataset`` (``csap_tiny.ade20k``), or ``hf-hub:org/repo``.
        pretrained: False; True (weights from the manifest: the named checkpoint, or for a bare architecture its
            ImageNet backbone); or a path to a checkpoint file / ``save_pretrained`` folder.
        num_classes: output classes; defaults to the checkpoint's or the dataset tag's (150 without either).
            A value different from the checkpoint's re-initialises the classifier (with a warning).
        in_chans: input channels (pretrained backbones adapt their first convolution).
        backbone: any timm model name instead of the architecture's backbone (``pretrained=True`` then uses
            timm's own weights for it).
        backbone_args: extra keyword arguments for the timm backbone.
        cache_dir: where downloads are cached (default: Hugging Face's cache / ``CSAP_ZOO_CACHE``).
        local_files_only: never touch the network (default: on when ``HF_HUB_OFFLINE`` or ``CSAP_ZOO_OFFLINE``).
        manifest: the weights manifest to resolve names in (default: the packaged one).
        **overrides: head options, e.g. ``attention="independent"``.
    """
    if name.startswith("hf-hub:"):  # a saved model always comes with its weights
        return from_pretrained(name, num_classes=num_classes, cache_dir=cache_dir, local_files_only=local_files_only)
    build_kwargs: Dict[str, Any] = dict(in_chans=in_chans, backbone=backbone, backbone_args=backbone_args,
                                        **overrides)
    if pretrained is False or pretrained is None:
        return build_model(name, num_classes=num_classes, **build_kwargs)
    if not isinstance(pretrained, bool):
        return _from_local_pretrained(name, Path(os.fspath(pretrained)), num_classes, build_kwargs)

    arch_name, tag = parse_model_name(name)
    manifest = manifest or default_manifest()
    if tag is not None:
        if backbone is not None:
            raise ValueError(f"{name!r} with pretrained=True loads a full checkpoint; it cannot take another "
                             f"backbone ({backbone!r})")
        checkpoint = manifest.get(name)
        verified = fetch_verified(checkpoint, cache_dir, local_files_only)  # the bytes that passed the hash check
        model = build_model(name, num_classes=checkpoint.num_classes,
                            data_config=_data_config_from_checkpoint(checkpoint), **build_kwargs)
        state = read_state_dict(verified.data, verified.path.name)
        load_checkpoint_into(model, convert_state_dict(state, checkpoint.format, model),
                             f"checkpoint {checkpoint.name}")
        if num_classes is not None and num_classes != checkpoint.num_classes:
            _warn_reset(f"checkpoint {checkpoint.name}", checkpoint.num_classes, num_classes)
            model.reset_classifier(num_classes)
        return model

    if backbone is not None:  # a foreign timm backbone: timm's own pretrained weights
        return build_model(name, num_classes=num_classes, pretrained_backbone=True, **build_kwargs)
    arch = get_architecture(arch_name)
    checkpoint = manifest.backbone_for(arch.backbone)
    if checkpoint is None:
        raise CheckpointUnavailableError(f"no ImageNet checkpoint for backbone {arch.backbone!r} in the weights "
                                         f"manifest; use pretrained=False")
    verified = fetch_verified(checkpoint, cache_dir, local_files_only)
    path = verified.path
    try:
        return build_model(name, num_classes=num_classes, **build_kwargs,
                           pretrained_backbone=read_state_dict(verified.data, path.name))
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {checkpoint.name} ({path}) does not fit backbone {arch.backbone!r}: "
                              f"{err}") from None
