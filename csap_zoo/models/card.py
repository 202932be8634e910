"""The model card a saved folder carries (its ``README.md``): Hugging Face metadata front matter, then what the model
is, its metrics and classes, and how to load it."""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional

import torch.nn as nn

from ..errors import ManifestError
from ..manifest import default_manifest
from .flops import estimate_gmacs

__all__ = ["render_model_card"]


def _count_gmacs(model: nn.Module, size: int) -> Optional[float]:
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


def render_model_card(model: Any, metrics: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None,
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

