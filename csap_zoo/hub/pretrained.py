"""The public factory with weights: ``create_model(name, pretrained=...)`` and ``from_pretrained(dir_or_repo)``.

Where weights come from:
- ``create_model("csap_tiny.ade20k", pretrained=True)``: the manifest entry of that name (a full checkpoint: the
  backbone is never downloaded separately);
- ``create_model("csap_tiny", pretrained=True, num_classes=5)``: the ImageNet checkpoint of the architecture's
  backbone, with a fresh head;
- ``pretrained="path/to/file_or_folder"``: a local state dict file or a ``save_pretrained`` folder;
- ``create_model("hf-hub:org/repo")`` / ``from_pretrained("org/repo")``: a ``save_pretrained`` folder on the Hub.

Loading is strict: a missing or unexpected key is an error. The one exception is the classifier when
``num_classes`` differs from the checkpoint's: it is re-initialised, with a warning.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..models.registry import build_model, get_architecture, parse_model_name
from ..models.segmentor import DataConfig, Segmentor, SegmentorConfig
from .convert import ConversionError, convert_state_dict, read_state_dict
from .download import CheckpointError, CheckpointUnavailableError, fetch_checkpoint, is_offline
from .manifest import Checkpoint, Manifest, default_manifest
from .serialization import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME

__all__ = ["create_model", "from_pretrained", "load_checkpoint_into"]

PathLike = Union[str, os.PathLike]
_CLASSIFIER_PREFIX = "decode_head.classifier."


def load_checkpoint_into(model: Segmentor, state: Dict[str, torch.Tensor], source: str,
                         backbone_only: bool = False) -> None:
    """Strictly load ``state`` into ``model``; a classifier of another class count is skipped with a warning.

    ``backbone_only``: the checkpoint holds backbone weights only; the head keeps its own (fresh) weights.
    """
    own = model.state_dict()
    state = dict(state)
    if backbone_only:
        state.update({k: v for k, v in own.items() if k.startswith("decode_head.")})
    # only a different class count (first dimension) excuses a classifier mismatch
    skipped = [k for k in state if k.startswith(_CLASSIFIER_PREFIX) and k in own
               and state[k].shape[0] != own[k].shape[0] and state[k].shape[1:] == own[k].shape[1:]]
    if skipped:
        warnings.warn(
            f"{source}: the checkpoint's classifier has {state[skipped[0]].shape[0]} classes, the model "
            f"{model.num_classes}; the classifier is re-initialised and needs fine-tuning.", stacklevel=3,
        )
        for key in skipped:
            del state[key]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ConversionError(f"{source} does not fit the model; shape mismatches: {mismatched[:5]}"
                              + (" ..." if len(mismatched) > 5 else ""))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConversionError(
            f"{source} does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {list(unexpected)[:5]}. Is it a checkpoint of this architecture?"
        )


def _data_config_from_checkpoint(checkpoint: Checkpoint) -> DataConfig:
    return DataConfig(mean=checkpoint.mean, std=checkpoint.std, train_crop=checkpoint.train_crop,
                      test_size=checkpoint.test_size, dataset=checkpoint.dataset)


def _read_model_folder(folder: Path) -> tuple:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ConversionError(f"{folder} is not a csap-zoo model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                              f"(written by save_pretrained)")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_path} is not valid JSON: {err}") from None
    if saved.get("format_version") != FORMAT_VERSION or "model" not in saved:
        raise ConversionError(f"{config_path} is not a csap-zoo config (format_version {FORMAT_VERSION} expected)")
    return saved, weights_path


def _model_from_folder(folder: Path, source: str, num_classes: Optional[int]) -> Segmentor:
    saved, weights_path = _read_model_folder(folder)
    config = SegmentorConfig.from_dict(saved["model"])
    model = Segmentor.from_config(config, data_config=DataConfig.from_dict(saved.get("data", {})))
    load_checkpoint_into(model, read_state_dict(weights_path), source)
    model.metrics = dict(saved.get("metrics", {}))
    if num_classes is not None and num_classes != model.num_classes:
        _warn_reset(source, model.num_classes, num_classes)
        model.reset_classifier(num_classes)
    return model


def _warn_reset(source: str, old: int, new: int) -> None:
    warnings.warn(f"{source}: checkpoint has {old} classes, num_classes={new}; the classifier is re-initialised "
                  f"and needs fine-tuning.", stacklevel=4)


def _download_hf_folder(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                        local_files_only: Optional[bool]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline() if local_files_only is None else local_files_only
    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                      local_files_only=offline)) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except LocalEntryNotFoundError:
        raise CheckpointUnavailableError(
            f"hf-hub:{repo_id} is not in the local cache" + (" and offline mode is on" if offline else
                                                             " and the Hub is unreachable")
            + ". Download it once while online, or point HF_HUB_CACHE at a cache that holds it."
        ) from None
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
                          if k in ("decode_head.classifier.weight", "decode_head.conv_seg.weight")), None)
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
        path = fetch_checkpoint(checkpoint, cache_dir, local_files_only)
        model = build_model(name, num_classes=checkpoint.num_classes,
                            data_config=_data_config_from_checkpoint(checkpoint), **build_kwargs)
        load_checkpoint_into(model, convert_state_dict(read_state_dict(path), checkpoint.format, model),
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
    path = fetch_checkpoint(checkpoint, cache_dir, local_files_only)
    try:
        return build_model(name, num_classes=num_classes, pretrained_backbone=str(path), **build_kwargs)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {checkpoint.name} ({path}) does not fit backbone {arch.backbone!r}: "
                              f"{err}") from None
