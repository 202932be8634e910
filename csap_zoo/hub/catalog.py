"""The zoo at a glance: every architecture and manifest checkpoint with size, compute, paper mIoU and status."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import torch

from ..complexity import estimate_gmacs
from ..models.registry import build_model, get_architecture, list_models
from .manifest import Manifest, default_manifest

__all__ = ["CatalogRow", "model_catalog"]


@dataclass(frozen=True)
class CatalogRow:
    name: str
    backbone: str
    dataset: str
    num_classes: int
    params_m: float
    gmacs_512: float
    paper_miou: Optional[float]
    weights: str


@lru_cache(maxsize=None)
def _size(arch_name: str, num_classes: int) -> Tuple[float, float]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(arch_name, num_classes=num_classes)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, estimate_gmacs(model, 512, 512)


def model_catalog(pattern: str = "*", manifest: Optional[Manifest] = None) -> List[CatalogRow]:
    """Rows for the bare architectures and the segmentation checkpoints whose names match ``pattern``.

    GMACs are at 512x512 (convolutions and matrix products, see ``csap_zoo.complexity.estimate_gmacs``); a bare
    architecture is sized with 150 classes, and its weights column describes its ImageNet backbone.
    """
    manifest = manifest or default_manifest()
    rows = []
    for arch_name in list_models():
        arch = get_architecture(arch_name)
        names = [arch_name] + [c.name for c in manifest.checkpoints
                               if c.kind == "segmentor" and c.architecture == arch_name]
        for name in names:
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            entry = manifest.get(name) if name in manifest else None
            backbone_entry = manifest.backbone_for(arch.backbone)
            num_classes = entry.num_classes if entry else 150
            params, gmacs = _size(arch_name, num_classes)
            if entry:
                weights = entry.status
            else:
                weights = f"ImageNet backbone {backbone_entry.status}" if backbone_entry else "none"
            rows.append(CatalogRow(
                name=name, backbone=arch.backbone, dataset=entry.dataset if entry else "-", num_classes=num_classes,
                params_m=params, gmacs_512=gmacs,
                paper_miou=entry.metrics.get("paper", {}).get("mIoU") if entry else None, weights=weights,
            ))
    return rows
