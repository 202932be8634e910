"""The configs that travel with a segmentor's weights (config.json): what to build and how its data was prepared.

``SegmentorConfig`` rebuilds the architecture (backbone name and options, head config, class count, feature
strides, padding policy); ``DataConfig`` holds the normalisation, train crop / test size and class names. Both are
read from untrusted files: every field is checked against its type and bounds (``csap_zoo.validation``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import timm

from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from ..errors import ConfigError
from ..validation import check_dataclass, check_value, dataclass_from_mapping, option, require_mapping
from .heads.csap import CSAPHeadConfig
from .heads.ham import HamHeadConfig

__all__ = ["DataConfig", "HEAD_TYPES", "HeadConfig", "MAX_CLASSES", "MAX_IMAGE_SIZE", "PAD_MODES", "SegmentorConfig",
           "check_backbone_args"]

HeadConfig = Union[CSAPHeadConfig, HamHeadConfig]
# Serialised name of each head config type (config.json "head.type").
HEAD_TYPES: Dict[str, type] = {"csap": CSAPHeadConfig, "ham": HamHeadConfig}

PAD_MODES = ("none", "zero-to-stride")

# Bounds of the configs (a file naming more is refused before anything is allocated).
MAX_CLASSES = 65535
MAX_IMAGE_SIZE = 16384  # pixels per side of a crop or evaluation size
# Backbone options the segmentor sets itself.
_RESERVED_BACKBONE_ARGS = frozenset({"features_only", "in_chans", "pretrained"})
# Backbone options that make timm fetch or read weights (or place the model); never taken from a file, whose
# weights are in its own model.safetensors.
_WEIGHT_SOURCE_BACKBONE_ARGS = frozenset({
    "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "pretrained_model_args", "checkpoint_path",
    "cache_dir", "device", "dtype",
})


def _check_backbone_arg_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return check_value(value, Optional[Union[bool, str]])
    if isinstance(value, (int, float)):
        return check_value(value, float) if isinstance(value, float) else value
    if isinstance(value, (list, tuple)) and depth < 2:
        if len(value) > 64:
            raise ConfigError(f"must be a list of at most 64 items, got {len(value)}")
        return [_check_backbone_arg_value(v, depth + 1) for v in value]
    raise ConfigError(f"must be a JSON number, string, true/false, null or a list of them, got {type(value).__name__}")


def check_backbone_args(args: Any, from_file: bool = False) -> Dict[str, Any]:
    """Backbone keyword arguments, checked: never the options the segmentor sets itself; ``from_file``: only JSON
    scalars and lists, and nothing that makes timm fetch or read weights."""
    args = require_mapping(args)
    for key, value in args.items():
        if key in _RESERVED_BACKBONE_ARGS or (from_file and key in _WEIGHT_SOURCE_BACKBONE_ARGS):
            raise ConfigError(
                "is not accepted: " + ("the segmentor sets it" if key in _RESERVED_BACKBONE_ARGS
                                                        else "it would make timm fetch or read weights, which "
                                                             "come from the model's own weights file"), field=key)
    if not from_file:
        return dict(args)
    out = {}
    for key, value in args.items():
        try:
            out[key] = _check_backbone_arg_value(value)
        except ConfigError as err:
            raise err.located(prefix=key) from None
    return out



@dataclass
class DataConfig:
    """How a model's inputs were prepared and what its outputs mean; travels with its weights.

    mean/std are on the 0-255 scale. ``test_size`` is (long side, short side) of the evaluation resize, if any.
    """

    mean: Tuple[float, float, float] = option(IMAGENET_MEAN_255, 0, 255)
    std: Tuple[float, float, float] = option(IMAGENET_STD_255, 0, 255, low_open=True)
    train_crop: Optional[Tuple[int, int]] = option(None, 1, MAX_IMAGE_SIZE)
    test_size: Optional[Tuple[int, int]] = option(None, 1, MAX_IMAGE_SIZE)
    dataset: Optional[str] = option(None, max_chars=256)
    class_names: Optional[List[str]] = option(None, length=(1, MAX_CLASSES), max_chars=1024)
    palette: Optional[List[Tuple[int, int, int]]] = option(None, 0, 255, length=(1, MAX_CLASSES))

    def __post_init__(self) -> None:
        check_dataclass(self)
        if self.class_names is not None and self.palette is not None and len(self.palette) != len(self.class_names):
            raise ConfigError(f"has {len(self.palette)} colours for {len(self.class_names)} class names",
                              field="palette")

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DataConfig":
        """From config.json's "data" object; unknown keys and bad values are ConfigErrors naming the field."""
        return dataclass_from_mapping(cls, data)


@dataclass
class SegmentorConfig:
    """Everything needed to rebuild a segmentor (weights aside)."""

    architecture: str = option(max_chars=256)
    backbone: str = option(max_chars=256)
    head: HeadConfig = option()
    num_classes: int = option(low=1, high=MAX_CLASSES)
    in_chans: int = option(3, 1, 1024)
    feature_strides: Tuple[int, ...] = option((8, 16, 32), 1, 1024, length=(1, 8))
    backbone_args: Dict[str, Any] = option(factory=dict)
    dataset: Optional[str] = option(None, max_chars=256)
    # How inputs that are not a multiple of the backbone stride are run (module docstring). A config.json written
    # before this field existed ran with zero padding.
    pad_mode: str = option("zero-to-stride", choices=PAD_MODES)

    def __post_init__(self) -> None:
        check_dataclass(self)
        try:
            self.backbone_args = check_backbone_args(self.backbone_args)
        except ConfigError as err:
            raise err.located(prefix="backbone_args") from None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (config.json); the head is tagged with its type."""
        data = asdict(self)
        head_type = next(name for name, cls in HEAD_TYPES.items() if isinstance(self.head, cls))
        data["head"] = {"type": head_type, **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in asdict(self.head).items()}}
        data["feature_strides"] = list(self.feature_strides)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SegmentorConfig":
        """From config.json's "model" object, which is untrusted: unknown keys, wrong types, values out of bounds,
        backbones from a model source (``hf-hub:``) and backbone options that fetch weights are ConfigErrors
        naming the field."""
        values = dict(require_mapping(data))
        if "head" not in values:
            raise ConfigError("is required", field="head")
        try:
            head = require_mapping(values["head"])
        except ConfigError as err:
            raise err.located(prefix="head") from None
        head_type = head.get("type")
        if not isinstance(head_type, str) or head_type not in HEAD_TYPES:
            raise ConfigError(f"must be one of {sorted(HEAD_TYPES)}, got {head_type!r}", field="head.type")
        try:
            values["head"] = dataclass_from_mapping(HEAD_TYPES[head_type], head, ignore=("type",))
        except ConfigError as err:
            raise err.located(prefix="head") from None
        backbone = values.get("backbone")
        if isinstance(backbone, str) and ":" in backbone:
            raise ConfigError(
                f"names a backbone from a model source ({backbone!r}); a saved model must name a timm architecture "
                f"(its weights come from its own model.safetensors, nothing is fetched)", field="backbone")
        try:
            values["backbone_args"] = check_backbone_args(values.get("backbone_args", {}), from_file=True)
        except ConfigError as err:
            raise err.located(prefix="backbone_args") from None
        config = dataclass_from_mapping(cls, values)
        if not timm.is_model(config.backbone):
            raise ConfigError(f"unknown timm backbone {config.backbone!r}; see timm.list_models()", field="backbone")
        return config
