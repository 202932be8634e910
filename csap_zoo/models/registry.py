"""Architecture registry: names -> segmentor configs -> models.

An architecture is a backbone (any timm model name) plus a head config (``csap_zoo.models.architectures`` holds
the table). Names may carry a dataset tag (``csap_tiny.ade20k``) that fixes the class count. ``build_model``
builds every segmentor; the public ``csap_zoo.create_model`` adds checkpoint weights on top.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

from ..constants import DATASET_NUM_CLASSES, DEMO_DATASET_NUM_CLASSES
from ..errors import ConfigError
from . import mscan  # noqa: F401  (registers the MSCAN family with timm)
from .architectures import (
    DEFAULT_NUM_CLASSES, Architecture, get_architecture, list_architectures, parse_model_name, register_architecture,
)
from .config import DataConfig, HeadConfig, SegmentorConfig
from .segmentor import Segmentor

__all__ = [
    "Architecture", "DATASET_NUM_CLASSES", "DEFAULT_NUM_CLASSES", "DEMO_DATASET_NUM_CLASSES", "apply_head_overrides",
    "build_model", "get_architecture", "list_architectures", "parse_model_name", "register_architecture",
]


def apply_head_overrides(head: HeadConfig, overrides: Dict[str, Any], model_name: str) -> HeadConfig:
    """``head`` with some options changed; unknown options and bad values are ConfigErrors naming the option."""
    valid = {f.name for f in dataclasses.fields(head)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for {model_name!r}; head options are {sorted(valid)}, backbone options "
            f"go in backbone_args={{...}}", field=unknown[0],
        )
    return dataclasses.replace(head, **overrides)  # the head config checks and normalises its values


def build_model(
        name: str,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        backbone: Optional[str] = None,
        backbone_args: Optional[Dict[str, Any]] = None,
        pretrained_backbone: Union[bool, str] = False,
        data_config: Optional[DataConfig] = None,
        **overrides: Any,
) -> Segmentor:
    """Build a segmentor by name, without checkpoint weights (``csap_zoo.create_model`` adds those).

    Args:
        name: ``arch`` or ``arch.dataset`` (e.g. ``csap_tiny.ade20k``); the dataset tag sets ``num_classes``.
        num_classes: output classes; overrides the dataset tag (default 150).
        in_chans: input channels.
        backbone: any timm model name to use instead of the architecture's backbone; the head's input
            channels come from that backbone's feature_info.
        backbone_args: extra keyword arguments for the timm backbone (e.g. ``drop_path_rate``).
        pretrained_backbone: backbone weights: a local checkpoint file, True for timm's defaults, or False.
        data_config: normalisation / class metadata to attach to the model.
        **overrides: head options, e.g. ``attention="independent"`` or ``propagation="nearest"`` for CSAP.
    """
    arch_name, tag = parse_model_name(name)
    arch = get_architecture(arch_name)
    if num_classes is None:
        num_classes = {**DATASET_NUM_CLASSES, **DEMO_DATASET_NUM_CLASSES}[tag] if tag else DEFAULT_NUM_CLASSES
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    args = dict(arch.backbone_args) if backbone is None else {}
    args.update(backbone_args or {})
    config = SegmentorConfig(
        architecture=arch_name,
        backbone=backbone or arch.backbone,
        head=apply_head_overrides(arch.head, dict(overrides), name),
        num_classes=num_classes,
        in_chans=in_chans,
        feature_strides=arch.feature_strides,
        backbone_args=args,
        dataset=tag,
        pad_mode=arch.pad_mode,
    )
    return Segmentor.from_config(config, pretrained_backbone=pretrained_backbone,
                                 data_config=data_config or DataConfig(dataset=tag))
