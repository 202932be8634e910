"""Architecture registry: names -> segmentor configs -> models.

An architecture is a backbone (any timm model name) plus a head config. Names may carry a dataset tag
(``csap_tiny.ade20k``) that fixes the class count. ``build_model`` builds every segmentor; the public
``csap_zoo.create_model`` adds checkpoint weights on top.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..constants import DATASET_NUM_CLASSES, DEMO_DATASET_NUM_CLASSES
from ..errors import ConfigError
from . import mscan  # noqa: F401  (registers the MSCAN family with timm)
from .heads.csap import CSAPHeadConfig
from .heads.ham import HamHeadConfig
from .segmentor import DataConfig, HeadConfig, Segmentor, SegmentorConfig

__all__ = [
    "Architecture", "DATASET_NUM_CLASSES", "DEFAULT_NUM_CLASSES", "DEMO_DATASET_NUM_CLASSES", "apply_head_overrides",
    "build_model", "get_architecture", "list_models", "parse_model_name", "register_architecture",
]

# Class count of a bare architecture name: ADE20K's, the paper's main benchmark.
DEFAULT_NUM_CLASSES = 150


@dataclass(frozen=True)
class Architecture:
    """A named backbone + head combination."""

    name: str
    backbone: str
    head: HeadConfig
    description: str = ""
    feature_strides: Tuple[int, ...] = (8, 16, 32)
    backbone_args: Dict[str, Any] = field(default_factory=dict)
    pad_mode: str = "zero-to-stride"  # see csap_zoo.models.segmentor


_ARCHITECTURES: Dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture to the registry (names are unique)."""
    if arch.name in _ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    if "." in arch.name:
        raise ValueError(f"architecture names may not contain '.', which separates the dataset tag: {arch.name!r}")
    _ARCHITECTURES[arch.name] = arch
    return arch


def parse_model_name(name: str) -> Tuple[str, Optional[str]]:
    """Split ``arch[.dataset]`` into its parts, checking both exist."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    arch_name, _, tag = name.partition(".")
    get_architecture(arch_name)
    if tag and tag not in DATASET_NUM_CLASSES and tag not in DEMO_DATASET_NUM_CLASSES:
        raise ValueError(f"unknown dataset tag {tag!r} in {name!r}; known tags: {sorted(DATASET_NUM_CLASSES)} "
                         f"(demo: {sorted(DEMO_DATASET_NUM_CLASSES)})")
    return arch_name, tag or None


def get_architecture(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ARCHITECTURES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown architecture {name!r}{hint} Known: {', '.join(sorted(_ARCHITECTURES))} "
            f"(csap_zoo.list_models() lists them)"
        ) from None


def list_models(pattern: str = "*", with_datasets: bool = False) -> List[str]:
    """Registered architecture names matching a shell-style pattern; with ``with_datasets`` every
    ``arch.dataset`` combination instead."""
    names = sorted(_ARCHITECTURES)
    if with_datasets:
        names = [f"{n}.{d}" for n in names for d in DATASET_NUM_CLASSES]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


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


# Built-in architectures. CSAP widths keep every size below its SegNeXt peer's GMACs (benchmarks/flops.py).
_SIZES = ("tiny", "small", "base", "large")
_CSAP_FUSION_CHANNELS = {"tiny": 128, "small": 128, "base": 768, "large": 1024}
_HAM = {  # ham_channels == channels, NMF bases R (SegNeXt's official settings)
    "tiny": (256, 16), "small": (256, 16), "base": (512, 64), "large": (1024, 64),
}

for _size in _SIZES:
    register_architecture(Architecture(
        name=f"csap_{_size}",
        backbone=f"mscan_{_size}",
        head=CSAPHeadConfig(channels=_CSAP_FUSION_CHANNELS[_size]),
        description=f"MSCAN-{_size[0].upper()} + CSAP head (cross-stage attention propagation)",
    ))
    _width, _bases = _HAM[_size]
    register_architecture(Architecture(
        name=f"segnext_{_size}",
        backbone=f"mscan_{_size}",
        head=HamHeadConfig(ham_channels=_width, channels=_width, num_bases=_bases),
        description=f"MSCAN-{_size[0].upper()} + LightHam head (SegNeXt baseline)",
        pad_mode="none",  # the original SegNeXt code runs inputs unpadded; its reported results come from that
    ))
