"""The zoo at a glance: every architecture and manifest checkpoint with size, compute, paper mIoU and status.

Also the discovery functions re-exported as ``csap_zoo.list_models`` (architectures, or with ``pretrained=True``
the checkpoints that have weights) and ``csap_zoo.list_pretrained`` (every segmentation checkpoint with its status).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import torch

from ..models.registry import build_model, get_architecture
from ..models.registry import list_architectures
from ..manifest import HfSource, Manifest, PackageSource, UrlSource, default_manifest

__all__ = ["CatalogRow", "PretrainedInfo", "list_models", "list_pretrained", "model_catalog"]


@dataclass(frozen=True)
class PretrainedInfo:
    """One segmentation checkpoint of the weights manifest, as ``list_pretrained`` reports it."""

    name: str  # what create_model(name, pretrained=True) takes, e.g. "csap_tiny.ade20k"
    architecture: str
    dataset: str
    status: str  # "published" or "unpublished"
    source_kind: Optional[str]  # "hf", "url", "package" (bundled with csap_zoo) or None (no file yet)

    @property
    def published(self) -> bool:
        """Whether weights can be loaded: published, with a file to load them from."""
        return self.status == "published" and self.source_kind is not None


def _source_kind(source: object) -> Optional[str]:
    if isinstance(source, HfSource):
        return "hf"
    if isinstance(source, UrlSource):
        return "url"
    if isinstance(source, PackageSource):
        return "package"
    return None


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.split(".", 1)[0], pattern)


def list_pretrained(pattern: str = "*", manifest: Optional[Manifest] = None) -> List[PretrainedInfo]:
    """The manifest's segmentation checkpoints (published or not) whose name or architecture matches
    ``pattern``, sorted by name. ImageNet backbone checkpoints are not listed (they are not segmentors)."""
    manifest = manifest or default_manifest()
    records = [
        PretrainedInfo(name=c.name, architecture=c.architecture, dataset=c.dataset, status=c.status,
                       source_kind=_source_kind(c.source))
        for c in manifest.checkpoints if c.kind == "segmentor" and _matches(c.name, pattern)
    ]
    return sorted(records, key=lambda r: r.name)


def list_models(pattern: str = "*", pretrained: bool = False, with_datasets: bool = False) -> List[str]:
    """Model names matching a shell-style pattern, sorted.

    By default the registered architectures (``with_datasets``: every ``arch.dataset`` combination). With
    ``pretrained=True`` the ``arch.dataset`` names that have published weights, i.e. what
    ``create_model(name, pretrained=True)`` can load; the pattern then matches the full name or the
    architecture alone (``"csap_tiny"`` finds ``"csap_tiny.shapes"``).
    """
    if not pretrained:
        return list_architectures(pattern, with_datasets=with_datasets)
    return [r.name for r in list_pretrained(pattern) if r.published]


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
    from ..models.flops import estimate_gmacs

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(arch_name, num_classes=num_classes)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, estimate_gmacs(model, 512, 512)


def model_catalog(pattern: str = "*", manifest: Optional[Manifest] = None) -> List[CatalogRow]:
    """Rows for the bare architectures and the segmentation checkpoints whose names match ``pattern``.

    GMACs are at 512x512 (convolutions and matrix products, see ``csap_zoo.models.flops.estimate_gmacs``); a bare
    architecture is sized with 150 classes, and its weights column describes its ImageNet backbone.
    """
    manifest = manifest or default_manifest()
    rows = []
    for arch_name in list_architectures():
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
                prefix_only = entry.published and not entry.sha256 and entry.sha256_prefix
                weights = f"{entry.status}/prefix" if prefix_only else entry.status
            else:
                weights = f"ImageNet backbone {backbone_entry.status}" if backbone_entry else "none"
            rows.append(CatalogRow(
                name=name, backbone=arch.backbone, dataset=entry.dataset if entry else "-", num_classes=num_classes,
                params_m=params, gmacs_512=gmacs,
                paper_miou=entry.metrics.get("paper", {}).get("mIoU") if entry else None, weights=weights,
            ))
    return rows
