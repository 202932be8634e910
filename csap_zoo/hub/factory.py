"""The public factory: ``create_model(name, pretrained=...)`` resolves a name once, builds the model once (through
``csap_zoo.models.registry``) and loads its weights once.

Where weights come from:
- ``create_model("csap_tiny.ade20k", pretrained=True)``: the manifest entry of that name (a full checkpoint: the
  backbone is never downloaded separately);
- ``create_model("csap_tiny", pretrained=True, num_classes=5)``: the ImageNet checkpoint of the architecture's
  backbone, with a fresh head;
- ``pretrained="path/to/file_or_folder"``: a local state dict file or a ``save_pretrained`` folder;
- ``create_model("hf-hub:org/repo")`` / ``from_pretrained("org/repo")``: a ``save_pretrained`` folder on the Hub.

Loading is strict (``csap_zoo.models.serialization.load_checkpoint_into``); ``from_pretrained`` is
``Segmentor.from_pretrained`` (the folder format).

Whichever way a checkpoint is loaded, its model carries the checkpoint's class names and palette in
``model.data_config``: a ``save_pretrained`` folder has them in its config.json (a manifest entry whose weights
ship inside such a folder, like the bundled demo ``csap_tiny.shapes``, reads them there), and a checkpoint of a
dataset with shipped metadata (ade20k, cityscapes, cocostuff) gets that dataset's names and palette
(``csap_zoo.data.metadata.get_dataset_info``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..data.metadata import get_dataset_info
from ..errors import CheckpointError, CheckpointUnavailableError, ConversionError
from ..manifest import Checkpoint, Manifest, PackageSource, default_manifest
from ..models.config import MAX_CLASSES, DataConfig
from ..models.registry import build_model, get_architecture, parse_model_name
from ..models.segmentor import Segmentor
from ..models.serialization import (
    CONFIG_NAME, load_checkpoint_into, read_model_folder, read_state_dict, reset_classifier,
)
from .convert import convert_state_dict, detect_format
from .download import fetch_verified

__all__ = ["create_model", "from_pretrained"]

PathLike = Union[str, os.PathLike]
Classes = Tuple[Optional[List[str]], Optional[List[Tuple[int, int, int]]]]


def _dataset_classes(dataset: Optional[str], num_classes: int) -> Classes:
    """The shipped class names and palette of ``dataset`` when they fit ``num_classes``, else (None, None)."""
    if not dataset:
        return None, None
    try:
        info = get_dataset_info(dataset)
    except ValueError:
        return None, None
    names = list(info.class_names)
    if len(names) != num_classes:
        return None, None
    return names, [tuple(int(c) for c in colour) for colour in info.palette]


def _checkpoint_classes(checkpoint: Checkpoint) -> Classes:
    """A manifest checkpoint's class names and palette: those of the save_pretrained folder its weights ship in
    (a package source), else its dataset's shipped metadata."""
    if isinstance(checkpoint.source, PackageSource):
        folder = checkpoint.source.resolve().parent
        if (folder / CONFIG_NAME).is_file():
            data = read_model_folder(folder).data_config
            if data.class_names is not None and len(data.class_names) == checkpoint.num_classes:
                return list(data.class_names), None if data.palette is None else [tuple(c) for c in data.palette]
    return _dataset_classes(checkpoint.class_set or checkpoint.dataset, checkpoint.num_classes)

from_pretrained = Segmentor.from_pretrained
"""Load a model saved with ``save_pretrained``: a local folder, or a Hub repo id (``org/name``); see
:meth:`csap_zoo.models.pretrained.PretrainedMixin.from_pretrained`."""


def _data_config_from_checkpoint(checkpoint: Checkpoint) -> DataConfig:
    """Normalisation and test size from the manifest entry; class names and palette from where the checkpoint
    keeps them (:func:`_checkpoint_classes`)."""
    class_names, palette = _checkpoint_classes(checkpoint)
    return DataConfig(mean=checkpoint.mean, std=checkpoint.std, train_crop=checkpoint.train_crop,
                      test_size=checkpoint.test_size, dataset=checkpoint.dataset, class_names=class_names,
                      palette=palette)


def _from_local_pretrained(name: str, path: Path, num_classes: Optional[int], build_kwargs: Dict[str, Any]) -> Segmentor:
    if path.is_dir():
        model = Segmentor.from_pretrained(path, num_classes=num_classes)
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
    fmt = detect_format(state)
    load_checkpoint_into(model, convert_state_dict(state, fmt, model), str(path),
                         backbone_only=fmt == "mscan-original")
    tag = parse_model_name(name)[1]
    if model.data_config.class_names is None:  # a bare weights file: the named dataset's classes, if they fit
        names, palette = _dataset_classes(tag, model.num_classes)
        if names is not None:
            model.data_config = dataclasses.replace(model.data_config, class_names=names, palette=palette)
    reset_classifier(model, num_classes, str(path))
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
        return Segmentor.from_pretrained(name, num_classes=num_classes, cache_dir=cache_dir,
                                         local_files_only=local_files_only)
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
        reset_classifier(model, num_classes, f"checkpoint {checkpoint.name}")
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
