"""Turning a saved model into a manifest entry: hash it, describe it, record where it is published."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..manifest import Checkpoint, HfSource, Manifest, PackageSource, UrlSource, default_manifest, load_manifest
from ..models.serialization import WEIGHTS_NAME, read_model_folder
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
        package: Optional[str] = None,
        notes: str = "",
) -> Checkpoint:
    """Hash ``model_dir``'s weights and write a published manifest entry ``name`` pointing at its upload.

    Exactly one of ``hf_repo`` (with the uploaded commit ``revision``), ``url`` or ``package`` (a path inside the
    installed package, for the bundled demo) says where the file lives. The entry's class count, crop, test size
    and normalisation come from the folder's config.json, and its metrics become the entry's reproduced metrics,
    so the manifest never states something else than the folder it describes.
    """
    folder = Path(model_dir)
    if sum(x is not None for x in (hf_repo, url, package)) != 1:
        raise ValueError("give exactly one of --hf-repo (with --revision) or --url")
    if hf_repo is not None and not revision:
        raise ValueError("an --hf-repo source needs the pinned --revision (the commit sha of the upload)")
    contents = read_model_folder(folder)  # validated field by field, like any folder that is loaded
    config, data = contents.config, contents.data_config
    architecture = name.split(".", 1)[0]
    if config.architecture != architecture:
        raise ValueError(f"{folder} holds a {config.architecture} model, not {architecture}")
    manifest: Manifest = load_manifest(manifest_path) if manifest_path else default_manifest()
    dataset = name.split(".", 1)[1] if "." in name else None
    if dataset is None:
        raise ValueError(f"manifest names are architecture.dataset, got {name!r}")
    previous = manifest.get(name) if name in manifest else None
    source = (HfSource(hf_repo, revision, WEIGHTS_NAME) if hf_repo else UrlSource(url) if url
              else PackageSource(package))
    entry = Checkpoint(
        name=name, architecture=architecture, kind="segmentor", dataset=data.dataset or dataset,
        num_classes=config.num_classes, class_set=previous.class_set if previous else dataset,
        train_crop=tuple(data.train_crop or (previous.train_crop if previous else (512, 512))),
        test_size=tuple(data.test_size or (previous.test_size if previous else (2048, 512))),
        mean=tuple(data.mean), std=tuple(data.std),
        source=source, sha256=sha256_of(contents.weights_path), sha256_prefix=None,
        size_bytes=contents.weights_path.stat().st_size, format="csap-safetensors",
        metrics={"paper": previous.metrics["paper"] if previous else {},
                 "upstream": previous.metrics["upstream"] if previous else {},
                 "reproduced": {k: v for k, v in contents.metrics.items() if isinstance(v, (int, float, str))}},
        license=license_id, status="published", notes=notes,
    )
    manifest.upsert(entry)
    manifest.save(manifest_path)
    return entry
