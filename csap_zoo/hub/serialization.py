"""Saving and publishing models: ``config.json`` + ``model.safetensors`` + a README model card.

The folder layout is what ``from_pretrained`` reads back, locally or from a Hugging Face Hub repository.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors.torch import save_file

from .. import __version__
from ..fileio import atomic_folder, atomic_write, clean_stale_temp
from ..complexity import estimate_gmacs
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


def render_model_card(model: Segmentor, metrics: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None,
                      gmacs_size: int = 512) -> str:
    """A Hugging Face style README: YAML front matter, then what the model is and how to load it."""
    config, data = model.config, model.data_config
    assert config is not None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = _count_gmacs(model, gmacs_size)
    dataset = data.dataset or config.dataset or "custom"
    classes = data.class_names
    lines = [
        "---",
        "library_name: csap-zoo",
        "license: apache-2.0",
        "pipeline_tag: image-segmentation",
        "tags: [semantic-segmentation, csap-zoo, timm]",
        f"datasets: [{dataset}]",
        "---",
        "",
        f"# {config.architecture}" + (f".{dataset}" if dataset != "custom" else ""),
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
    return "\n".join(lines)


def save_pretrained(
        model: Segmentor,
        save_directory: Union[str, Path],
        metrics: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

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
        (staging / MODEL_CARD_NAME).write_text(render_model_card(model, metrics, repo_id))
    return target


def push_to_hub(
        model: Segmentor,
        repo_id: str,
        metrics: Optional[Dict[str, Any]] = None,
        private: bool = False,
        commit_message: str = "Upload csap-zoo model",
        token: Optional[str] = None,
) -> str:
    """Save the model into a temporary folder and upload it to a Hugging Face Hub model repository.

    Returns the commit sha of the upload, which is what a manifest entry pins as ``revision``.
    """
    from huggingface_hub import HfApi

    metrics = model.metrics if metrics is None else metrics
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", metrics=metrics, repo_id=repo_id)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 repo_type="model")
    return getattr(info, "oid", None) or str(info)
