"""Turning a saved model into a manifest entry: hash it, describe it, record where it is published."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from ..manifest import Checkpoint, HfSource, Manifest, UrlSource, default_manifest, load_manifest
from ..models.serialization import CONFIG_NAME, WEIGHTS_NAME
from .download import sha256_of

__all__ = ["publish_entry"]


def publish_entry(
        model_dir: Union[str, Path],
        name: str,
        hf_repo: Optional[str] = None,
        revision: Optional[str] = None,
        url: Optional[str] = None,
        manifest_path: Union[str, Path, None] = None,
        license_id: str = "apache-2.0",
) -> Checkpoint:
    """Hash ``model_dir``'s weights and write a published manifest entry ``name`` pointing at its upload.

    Exactly one of ``hf_repo`` (with the uploaded commit ``revision``) or ``url`` says where the file lives.
    Metrics in the folder's config.json become the entry's reproduced metrics.
    """
    folder = Path(model_dir)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{folder} is not a save_pretrained folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    if (hf_repo is None) == (url is None):
        raise ValueError("give exactly one of --hf-repo (with --revision) or --url")
    if hf_repo is not None and not revision:
        raise ValueError("an --hf-repo source needs the pinned --revision (the commit sha of the upload)")
    saved = json.loads(config_path.read_text())
    model, data = saved["model"], saved.get("data", {})
    architecture = name.split(".", 1)[0]
    if model["architecture"] != architecture:
        raise ValueError(f"{folder} holds a {model['architecture']} model, not {architecture}")
    manifest: Manifest = load_manifest(manifest_path) if manifest_path else default_manifest()
    dataset = name.split(".", 1)[1] if "." in name else None
    if dataset is None:
        raise ValueError(f"manifest names are architecture.dataset, got {name!r}")
    previous = manifest.get(name) if name in manifest else None
    source = HfSource(hf_repo, revision, WEIGHTS_NAME) if hf_repo else UrlSource(url)
    entry = Checkpoint(
        name=name, architecture=architecture, kind="segmentor", dataset=data.get("dataset") or dataset,
        num_classes=model["num_classes"], class_set=previous.class_set if previous else dataset,
        train_crop=tuple(data.get("train_crop") or (previous.train_crop if previous else (512, 512))),
        test_size=tuple(data.get("test_size") or (previous.test_size if previous else (2048, 512))),
        mean=tuple(data.get("mean", IMAGENET_MEAN_255)), std=tuple(data.get("std", IMAGENET_STD_255)),
        source=source, sha256=sha256_of(weights_path), sha256_prefix=None,
        size_bytes=weights_path.stat().st_size, format="csap-safetensors",
        metrics={"paper": previous.metrics["paper"] if previous else {},
                 "upstream": previous.metrics["upstream"] if previous else {},
                 "reproduced": dict(saved.get("metrics", {}))},
        license=license_id, status="published", notes="",
    )
    manifest.upsert(entry)
    manifest.save(manifest_path)
    return entry
