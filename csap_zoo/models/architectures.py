"""Named architectures: a backbone (any timm model name) plus a head config, and the table of them.

Names may carry a dataset tag (``csap_tiny.ade20k``) that fixes the class count. ``csap_zoo.models.registry``
turns a name into a model; this module only knows the names (so the folder format can check a saved name
without building anything).
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..constants import DATASET_NUM_CLASSES, DEMO_DATASET_NUM_CLASSES
from .config import HeadConfig
from .heads.csap import CSAPHeadConfig
from .heads.ham import HamHeadConfig

__all__ = ["Architecture", "DEFAULT_NUM_CLASSES", "get_architecture", "list_architectures", "parse_model_name",
           "register_architecture"]

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


def list_architectures(pattern: str = "*", with_datasets: bool = False) -> List[str]:
    """Registered architecture names matching a shell-style pattern; with ``with_datasets`` every
    ``arch.dataset`` combination instead."""
    names = sorted(_ARCHITECTURES)
    if with_datasets:
        names = [f"{n}.{d}" for n in names for d in DATASET_NUM_CLASSES]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


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
