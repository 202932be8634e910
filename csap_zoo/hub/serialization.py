"""Saving and publishing models: ``config.json`` + ``model.safetensors`` + a README model card.

The folder layout is what ``from_pretrained`` reads back, locally or from a Hugging Face Hub repository.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from safetensors.torch import save_file

from ..version import __version__
from ..fileio import atomic_folder, atomic_write, clean_stale_temp
from ..models.flops import estimate_gmacs
from ..models.fused import is_fused
from ..models.segmentor import Segmentor

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "MODEL_CARD_NAME", "FORMAT_VERSION", "push_to_hub", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1


def model_config_dict(model: Segmentor, metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything config.json records: the architecture config, the data config and metrics."""
    if model.config is None:
        raise ValueError("this segmentor was not built from a SegmentorConfig (csap_zoo.create_model does that), "
                         "so it cannot be saved in a reloadable form")
    return {
        "format_version": FORMAT_VERSION,
        "csap_zoo_version": __version__,
        "model": model.config.to_dict(),
        "data": model.data_config.to_dict(),
        "metrics": metrics or {},
    }


def _count_gmacs(model: Segmentor, size: int) -> Optional[float]:
    try:
        return estimate_gmacs(model, size, size)
    except Exception:  # a model the counter cannot follow must not block saving it
        return None


# Card metric names -> Hugging Face metric types (model-index); other float-valued entries keep their own name.
_METRIC_TYPES = {"mIoU": "mean_iou", "mAcc": "mean_accuracy", "aAcc": "accuracy"}
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,63}")


def _card_license(license: Optional[str], architecture: str, dataset_tag: Optional[str]) -> Optional[str]:
    """The card's license: the argument, else the manifest entry the model is named after, else None."""
    if license is not None:
        if not isinstance(license, str) or not _LICENSE_ID.fullmatch(license):
            raise ValueError(f"license must be a Hugging Face license identifier such as 'apache-2.0', 'mit' or "
                             f"'other' (lowercase, no spaces), got {license!r}")
        return license
    if not dataset_tag:
        return None
    from .manifest import ManifestError, default_manifest

    try:
        manifest = default_manifest()
    except ManifestError:  # a broken CSAP_ZOO_MANIFEST must not block saving a model
        return None
    name = f"{architecture}.{dataset_tag}"
    if name not in manifest:
        return None
    entry = manifest.get(name)
    return entry.license if entry.kind == "segmentor" and entry.architecture == architecture else None


def _eval_results(metrics: Dict[str, Any], model_dataset: str) -> List[Any]:
    from huggingface_hub import EvalResult

    measured_on = metrics.get("dataset") if isinstance(metrics.get("dataset"), str) else model_dataset
    results = []
    for key, value in metrics.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or (key not in _METRIC_TYPES and not isinstance(value, float)):
            continue  # counts such as val_images or iterations are not results
        results.append(EvalResult(
            task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=measured_on,
            dataset_name=measured_on, metric_type=_METRIC_TYPES.get(key, key), metric_name=key, metric_value=value,
        ))
    return results


def render_model_card(model: Segmentor, metrics: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None,
                      gmacs_size: int = 512, license: Optional[str] = None) -> str:
    """A Hugging Face model card: metadata front matter (huggingface_hub's ModelCardData), then what the model is
    and how to load it.

    The metadata has ``library_name: csap-zoo``, ``pipeline_tag: image-segmentation``, the dataset and the numeric
    metrics as ``model-index`` results (values as recorded, e.g. percent). ``license`` is a Hugging Face license
    identifier; without one the card takes the license of the manifest checkpoint the model is named after
    (``architecture.dataset``), and otherwise has no license field, for the author to choose one.
    """
    from huggingface_hub import ModelCard, ModelCardData

    config, data = model.config, model.data_config
    assert config is not None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = _count_gmacs(model, gmacs_size)
    dataset = data.dataset or config.dataset or "custom"
    classes = data.class_names
    title = config.architecture + (f".{dataset}" if dataset != "custom" else "")
    eval_results = _eval_results(metrics or {}, dataset)
    metadata = ModelCardData(
        library_name="csap-zoo",
        pipeline_tag="image-segmentation",
        license=_card_license(license, config.architecture, config.dataset or data.dataset),
        tags=["csap-zoo", "semantic-segmentation"],
        datasets=[dataset] if dataset != "custom" else None,
        model_name=(repo_id or title) if eval_results else None,
        eval_results=eval_results or None,
    )
    lines = [
        f"# {title}",
        "",
        f"Semantic segmentation model from csap-zoo: backbone `{config.backbone}` with a "
        f"`{type(model.decode_head).__name__}` decode head.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{config.architecture}` |",
        f"| dataset | {dataset} |",
        f"| classes | {config.num_classes} |",
        f"| input channels | {config.in_chans} |",
        "| input padding | " + ("none: inputs run at their own size, logits resized to it |" if config.pad_mode == "none"
                               else f"zero padding to a multiple of {model.stride}, logits cropped |"),
        f"| parameters | {params:.2f} M |",
        f"| GMACs ({gmacs_size}x{gmacs_size}, convolutions and matmuls) | "
        + (f"{gmacs:.2f} |" if gmacs is not None else "not counted |"),
    ]
    if data.train_crop:
        lines.append(f"| training crop | {data.train_crop[0]}x{data.train_crop[1]} |")
    if data.test_size:
        lines.append(f"| evaluation resize | {data.test_size[0]}x{data.test_size[1]} (keep ratio) |")
    lines.append(f"| mean / std (0-255) | {list(data.mean)} / {list(data.std)} |")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics recorded.")
    if classes:
        lines += ["", "## Classes", "", ", ".join(f"{i}: {name}" for i, name in enumerate(classes))]
    alternative = (f'csap_zoo.create_model("hf-hub:{repo_id}")' if repo_id
                   else f'csap_zoo.create_model("{config.architecture}", pretrained="path/to/this/folder")')
    lines += [
        "", "## How to load", "", "```python", "import csap_zoo", "",
        f'model = csap_zoo.from_pretrained("{repo_id or "path/to/this/folder"}").eval()',
        f"# or: {alternative}", "```", "",
    ]
    return str(ModelCard("---\n" + metadata.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def save_pretrained(
        model: Segmentor,
        save_directory: Union[str, Path],
        metrics: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        license: Optional[str] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

    ``license`` is the model card's Hugging Face license identifier (see ``render_model_card`` for the default).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type, halving the file; loading
    copies them back into the model's own (fp32) parameters.

    The folder is assembled in a temporary sibling and moved into place, so a failure never leaves a
    half-written model folder; an existing folder's three files are replaced, other files are kept. Files and a
    new folder get the permissions the umask gives; staging folders of earlier saves to the same destination that
    were killed midway are removed (see ``csap_zoo.fileio.clean_stale_temp`` for when one counts as abandoned).
    """
    if is_fused(model):
        raise ValueError("this model was optimised for inference (folded, fused layers) and no longer has the "
                         "architecture's checkpoint layout; save the original model instead of the "
                         "optimize_for_inference() copy")
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    metrics = model.metrics if metrics is None else metrics
    config = model_config_dict(model, metrics)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    clean_stale_temp(target.parent, re.escape(target.name))  # staging folders a killed save left behind
    with atomic_folder(target, (WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME), fsync=True) as staging:
        # safetensors writes a 0600 file of its own; atomic_write gives it the usual permissions. One metadata
        # entry: safetensors orders several in a per-process random order, so the same weights would not give
        # the same bytes (and sha256) twice; config.json records the csap-zoo version.
        atomic_write(staging / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / MODEL_CARD_NAME).write_text(render_model_card(model, metrics, repo_id, license=license))
    return target


def push_to_hub(
        model: Segmentor,
        repo_id: str,
        metrics: Optional[Dict[str, Any]] = None,
        private: bool = False,
        commit_message: str = "Upload csap-zoo model",
        token: Optional[str] = None,
        license: Optional[str] = None,
) -> str:
    """Save the model into a temporary folder and upload it to a Hugging Face Hub model repository.

    ``license`` is the model card's license identifier (see ``render_model_card``).

    Returns the commit sha of the upload, which is what a manifest entry pins as ``revision``.
    """
    from huggingface_hub import HfApi

    metrics = model.metrics if metrics is None else metrics
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", metrics=metrics, repo_id=repo_id, license=license)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 repo_type="model")
    return getattr(info, "oid", None) or str(info)
