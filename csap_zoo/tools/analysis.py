"""Attention analysis: how close are propagated attention maps to independently computed ones?

The question (REFERENCE.md section 1, the referee's): CSAP computes attention only at the deepest decoder stage
and propagates it to the shallower ones. Is that map close to what a shallower stage would compute on its own?
For every shallow stage ``i`` this module compares

* ``P_i``: the deepest (source) stage's map resized to stage ``i``'s query grid (``propagate_map``, the model's own
  propagation mode), and
* ``I_i``: the map stage ``i`` computes with its own query/key projections (MetaSeg-style "independent" attention,
  ``softmax(q_i k_i^T * scale)`` over the same pooled cells),

with two numbers, averaged over heads and (real, non-padded) query positions, then over images:

* cosine similarity of each query's two rows (1 = same direction), and
* ``KL(I || P) = sum_m I log((I + eps) / (P + eps))`` per query row (0 = same distribution; nats).

For reference each stage also reports ``KL(I || uniform)`` (how far the independent map is from attending to every
cell equally; a map that is not more peaked than that carries little information either way).

Where the ``I_i`` come from depends on the model:

* a stage trained in **independent** mode has its own q/k: its maps are compared, as they are, with what propagation
  from the deepest stage would give (``method="own"``);
* a stage trained in **propagate** mode has no q/k weights at all. The analysis then builds the model's
  independent-mode twin (every shared weight copied, strictly: the only new parameters are the q/k projections of
  those stages) and *fits* the new q/k by least squares so that the stage's logits ``q_i(x) k_i(c)^T * scale``
  best match the centred log of the propagated map on the fit images (``method="fitted"``, alternating least
  squares, see :func:`fit_qk`; softmax ignores a constant added to a row, so rows are centred before matching),
  then refines them by L-BFGS on the cross-entropy of the propagated rows under the stage's softmax
  (:func:`refine_qk`; log-space least squares alone over-weights the near-zero cells of peaked maps).
  The comparison then measures **how much of the propagated map the stage's own features can express through a
  channel-reduced query/key pair** -- an upper bound on how similar an independently computed map *could* be at
  that stage, not what a separately trained independent model would learn. ``fit_r2`` (1 - residual / total of
  the centred log-maps) says how much of the propagated structure the fit captured. Fit and evaluation use
  different images by default, so the numbers are out-of-sample.

Maps are taken on the padded feature grids; queries that fall wholly in the padding are left out of every number.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..fileio import atomic_write
from ..models.heads.csap import CSAPHead
from ..models.segmentor import Segmentor
from .independent_twin import csap_head_of, fit_qk, independent_twin_head, refine_qk

__all__ = [
    "AttentionSimilarityReport", "StageSimilarity", "attention_similarity", "format_similarity_table",
    "generate_images", "load_images", "map_similarity", "plot_similarity", "save_similarity_json",
]

ImageInput = Union[str, os.PathLike, torch.Tensor]


# ----------------------------------------------------------------------------------------------- metrics
def map_similarity(
        independent: torch.Tensor, propagated: torch.Tensor, eps: float = 1e-8,
) -> Dict[str, torch.Tensor]:
    """Row-wise cosine similarity and KL(independent || propagated) of two attention maps (..., N, M).

    Returns per-row tensors of shape (..., N): ``cosine`` and ``kl`` (nats, with ``eps`` added to both
    distributions inside the log), plus ``kl_uniform`` = KL(independent || uniform over the M cells).
    """
    if independent.shape != propagated.shape:
        raise ValueError(f"maps differ in shape: {tuple(independent.shape)} vs {tuple(propagated.shape)}")
    ind = independent.double()
    prop = propagated.double()
    cosine = torch.nn.functional.cosine_similarity(ind, prop, dim=-1, eps=1e-12)
    log_ind = torch.log(ind + eps)
    kl = (ind * (log_ind - torch.log(prop + eps))).sum(-1)
    kl_uniform = (ind * (log_ind + math.log(ind.shape[-1]))).sum(-1)
    return {"cosine": cosine, "kl": kl, "kl_uniform": kl_uniform}


# ----------------------------------------------------------------------------------------------- images
def generate_images(num_images: int = 4, height: int = 512, width: int = 512, seed: int = 0,
                    in_chans: int = 3) -> List[torch.Tensor]:
    """Deterministic synthetic scenes (1, C, H, W), already normalised: smooth gradients plus a few flat-coloured
    rectangles and discs, so that the maps have regions to attend to (random weights or not)."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height).view(height, 1)
    xs = torch.linspace(-1, 1, width).view(1, width)
    images = []
    for _ in range(num_images):
        coef = torch.randn(in_chans, 2, 1, 1, generator=gen)
        img = coef[:, 0] * ys + coef[:, 1] * xs  # (C, H, W) gradient
        for _ in range(int(torch.randint(3, 7, (1,), generator=gen))):
            colour = torch.randn(in_chans, 1, 1, generator=gen) * 1.5
            cy, cx = torch.rand(2, generator=gen) * 2 - 1
            ry, rx = torch.rand(2, generator=gen) * 0.5 + 0.1
            if bool(torch.rand(1, generator=gen) < 0.5):
                mask = ((ys - cy).abs() < ry) & ((xs - cx).abs() < rx)
            else:
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
            img = torch.where(mask, colour.expand_as(img), img)
        img = img + 0.1 * torch.randn(in_chans, height, width, generator=gen)
        images.append(img.unsqueeze(0))
    return images


def load_images(inputs: Sequence[ImageInput], model: Segmentor,
                size: Optional[Tuple[int, int]] = None) -> List[torch.Tensor]:
    """Turn paths and tensors into a list of normalised (1, C, H, W) float tensors.

    Paths are read as RGB with Pillow, optionally resized to ``size`` (height, width), and normalised with the
    model's ``data_config`` mean/std. Tensors are taken as already normalised; (C, H, W) gets a batch axis and a
    batch is split into single images.
    """
    out: List[torch.Tensor] = []
    for item in inputs:
        if isinstance(item, torch.Tensor):
            t = item.unsqueeze(0) if item.dim() == 3 else item
            if t.dim() != 4 or not t.is_floating_point():
                raise ValueError(f"image tensors must be float (C, H, W) or (B, C, H, W), got {tuple(item.shape)} "
                                 f"{item.dtype}")
            out.extend(t[i:i + 1].float() for i in range(t.shape[0]))
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
        mean = torch.tensor(model.data_config.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(model.data_config.std, dtype=torch.float32).view(3, 1, 1)
        out.append(((torch.from_numpy(array).permute(2, 0, 1) - mean) / std).unsqueeze(0))
    return out


# ----------------------------------------------------------------------------------------------- report
@dataclass
class StageSimilarity:
    """Propagated vs independent maps at one shallow stage (means over images; std across images)."""

    stage: int
    grid: Tuple[int, int]
    channels: int
    method: str  # "own" (the stage's trained q/k) or "fitted" (least-squares q/k of the independent twin)
    cosine: float
    cosine_std: float
    kl: float
    kl_std: float
    kl_uniform: float
    fit_r2: Optional[float] = None  # least-squares fit of the centred log-maps (fit images)
    fit_kl: Optional[float] = None  # KL(propagated || fitted own) per row on the fit images, after refinement


@dataclass
class AttentionSimilarityReport:
    model: str
    attention: Tuple[str, ...]
    propagation: str
    num_heads: int
    num_cells: int
    num_images: int
    num_fit_images: int
    image_sizes: List[Tuple[int, int]]
    eps: float
    stages: List[StageSimilarity] = field(default_factory=list)
    example: Optional[Dict[str, Any]] = None  # maps of the first image for plotting (not in to_dict)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data.pop("example")
        return data


def _valid_rows(grid: Tuple[int, int], padded: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Flat indices of the grid positions that overlap the real (unpadded) image."""
    rows = math.ceil(size[0] * grid[0] / padded[0])
    cols = math.ceil(size[1] * grid[1] / padded[1])
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return (ys * grid[1] + xs).reshape(-1)


def _collect(model: Segmentor, head: CSAPHead, images: Sequence[torch.Tensor]):
    """For each image and shallow stage: query tokens, cells and propagated map, on real query rows only."""
    records = []
    for image in images:
        model.check_input(image)
        padded = model.prepare_input(image)
        stages = head.stage_attention_inputs(model.forward_features(padded))
        per_stage = []
        for stage in stages[:-1]:
            rows = _valid_rows(stage.grid, tuple(padded.shape[-2:]), tuple(image.shape[-2:]))
            per_stage.append(dict(tokens=stage.tokens[0, rows], cells=stage.cells[0],
                                  propagated=stage.propagated[0][:, rows], grid=stage.grid, rows=rows))
        records.append(per_stage)
    return records


@torch.no_grad()
def attention_similarity(
        model: Union[Segmentor, str],
        images: Optional[Sequence[ImageInput]] = None,
        fit_images: Optional[Sequence[ImageInput]] = None,
        num_images: int = 4,
        image_size: Tuple[int, int] = (512, 512),
        eps: float = 1e-8,
        fit_iterations: int = 20,
        ridge: float = 1e-6,
        refine_steps: int = 50,
        seed: int = 0,
        **model_kwargs: Any,
) -> AttentionSimilarityReport:
    """Compare propagated and independently computed attention maps at every shallow stage of a CSAP model.

    Args:
        model: a CSAP segmentor, or a name for :func:`csap_zoo.create_model` (``model_kwargs`` go with it).
        images: image paths (normalised with the model's mean/std, resized to ``image_size``) or normalised
            tensors; default: ``num_images`` generated scenes of ``image_size``.
        fit_images: images on which the q/k of propagate-mode stages are fitted; default: ``num_images``
            generated scenes other than the evaluation ones (a different seed). Unused when every shallow stage
            has its own q/k.
        eps: added to both maps inside the KL's log.
        fit_iterations, ridge: alternating-least-squares rounds and relative ridge of :func:`fit_qk`.
        refine_steps: L-BFGS iterations of :func:`refine_qk` after the least-squares fit (0: least squares only).

    See the module docstring for what the numbers measure.
    """
    name = model if isinstance(model, str) else ""
    if isinstance(model, str):
        from ..hub.factory import create_model

        model = create_model(model, **model_kwargs)
    head = csap_head_of(model)
    name = name or getattr(getattr(model, "config", None), "architecture", None) or type(model).__name__
    was_training = model.training
    model.eval()
    try:
        in_chans = model.in_chans
        eval_images = (load_images(images, model, image_size) if images is not None
                       else generate_images(num_images, *image_size, seed=seed, in_chans=in_chans))
        if not eval_images:
            raise ValueError("no images to analyse")
        twin = independent_twin_head(head).eval()
        fitted: Dict[int, float] = {}
        fit_kls: Dict[int, float] = {}
        fit_count = 0
        to_fit = [i for i, m in enumerate(head.attention_modes) if m == "propagate"]
        if to_fit:
            fit_list = (load_images(fit_images, model, image_size) if fit_images is not None
                        else generate_images(num_images, *image_size, seed=seed + 10_000, in_chans=in_chans))
            if not fit_list:
                raise ValueError("no images to fit the query/key projections on")
            fit_count = len(fit_list)
            fit_records = _collect(model, head, fit_list)
            for i in to_fit:
                attn = twin.blocks[i].attn
                qk_dim = attn.q.out_features // attn.num_heads
                fit_tokens = [r[i]["tokens"] for r in fit_records]
                fit_cells = [r[i]["cells"] for r in fit_records]
                fit_maps = [r[i]["propagated"] for r in fit_records]
                # log-space targets floored at 1e-6: tails below that do not change a softmax row
                q_w, q_b, k_w, r2 = fit_qk(
                    fit_tokens, fit_cells, [torch.log(m.clamp_min(1e-6)) for m in fit_maps],
                    attn.num_heads, qk_dim, attn.scale, iterations=fit_iterations, ridge=ridge,
                )
                attn.q.weight.copy_(q_w)
                attn.q.bias.copy_(q_b)
                attn.k.weight.copy_(k_w)
                attn.k.bias.zero_()
                fitted[i] = r2
                if refine_steps:
                    fit_kls[i] = refine_qk(attn, fit_tokens, fit_cells, fit_maps, steps=refine_steps)

        records = _collect(model, head, eval_images)
        per_stage: Dict[int, Dict[str, List[float]]] = {}
        example: Dict[str, Any] = {"propagated": [], "independent": [], "grids": []}
        for n, record in enumerate(records):
            for i, rec in enumerate(record):
                own = twin.blocks[i].attn.compute_map(rec["tokens"][None], rec["cells"][None])[0]
                sims = map_similarity(own, rec["propagated"], eps)
                stats = per_stage.setdefault(i, {"cosine": [], "kl": [], "kl_uniform": []})
                for key in stats:
                    stats[key].append(float(sims[key].mean()))
                if n == 0:
                    example["grids"].append(rec["grid"])
                    for key, value in (("propagated", rec["propagated"]), ("independent", own)):
                        full = torch.full((value.shape[0], rec["grid"][0] * rec["grid"][1], value.shape[-1]),
                                          float("nan"))
                        full[:, rec["rows"]] = value.float()
                        example[key].append(full)

        def _mean_std(values: List[float]) -> Tuple[float, float]:
            t = torch.tensor(values, dtype=torch.float64)
            return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0

        stages = []
        for i, stats in sorted(per_stage.items()):
            cos_m, cos_s = _mean_std(stats["cosine"])
            kl_m, kl_s = _mean_std(stats["kl"])
            stages.append(StageSimilarity(
                stage=i, grid=tuple(records[0][i]["grid"]), channels=head.in_channels[i],
                method="fitted" if i in fitted else "own", cosine=cos_m, cosine_std=cos_s, kl=kl_m, kl_std=kl_s,
                kl_uniform=_mean_std(stats["kl_uniform"])[0], fit_r2=fitted.get(i), fit_kl=fit_kls.get(i),
            ))
        source_attn = head.blocks[-1].attn
        return AttentionSimilarityReport(
            model=name, attention=tuple(head.attention_modes), propagation=head.propagation,
            num_heads=source_attn.num_heads, num_cells=int(records[0][0]["cells"].shape[0]),
            num_images=len(eval_images), num_fit_images=fit_count,
            image_sizes=[tuple(img.shape[-2:]) for img in eval_images], eps=eps, stages=stages, example=example,
        )
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------- output
def format_similarity_table(report: AttentionSimilarityReport) -> str:
    """Markdown table, one row per shallow stage."""
    lines = [
        f"model: {report.model} (attention {', '.join(report.attention)}; propagation {report.propagation}; "
        f"{report.num_heads} heads over {report.num_cells} cells; {report.num_images} images"
        + (f", q/k fitted on {report.num_fit_images} others" if report.num_fit_images else "") + ")",
        "",
        "| stage | grid | channels | independent map | cosine | KL(ind \\|\\| prop) | KL(ind \\|\\| uniform) | fit R2 "
        "| fit KL(prop \\|\\| ind) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.stages:
        r2 = "" if s.fit_r2 is None else f"{s.fit_r2:.3f}"
        fit_kl = "" if s.fit_kl is None else f"{s.fit_kl:.4f}"
        lines.append(
            f"| {s.stage} | {s.grid[0]}x{s.grid[1]} | {s.channels} | {s.method} | {s.cosine:.4f} ± {s.cosine_std:.4f} "
            f"| {s.kl:.4f} ± {s.kl_std:.4f} | {s.kl_uniform:.4f} | {r2} | {fit_kl} |"
        )
    return "\n".join(lines)


def save_similarity_json(report: AttentionSimilarityReport, path: Union[str, os.PathLike]) -> Path:
    """Write the report (without example maps) as JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return atomic_write(path, write)


def plot_similarity(report: AttentionSimilarityReport, path: Union[str, os.PathLike], head: int = 0) -> Path:
    """PNG: cosine and KL per stage (bars with std across images) and, for the first image, one head's
    propagated and independent attention to the centre cell at every shallow stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report.stages
    has_maps = bool(report.example and report.example.get("grids"))
    cols = 2 + (len(stages) if has_maps else 0)
    fig = plt.figure(figsize=(3.4 * cols, 6.4 if has_maps else 3.4))
    rows = 2 if has_maps else 1
    labels = [f"stage {s.stage}\n{s.grid[0]}x{s.grid[1]}" for s in stages]
    ax = fig.add_subplot(rows, cols, 1)
    ax.bar(labels, [s.cosine for s in stages], yerr=[s.cosine_std for s in stages], color="tab:blue")
    ax.set_ylim(0, 1.05)
    ax.set_title("cosine(ind, prop)")
    ax = fig.add_subplot(rows, cols, 2)
    ax.bar(labels, [s.kl for s in stages], yerr=[s.kl_std for s in stages], color="tab:orange", label="KL(ind||prop)")
    ax.plot(labels, [s.kl_uniform for s in stages], "k_", markersize=20, label="KL(ind||uniform)")
    ax.set_title("KL (nats)")
    ax.legend(fontsize=7)
    if has_maps:
        cell = report.num_cells // 2
        for j, (grid, prop, ind) in enumerate(zip(report.example["grids"], report.example["propagated"],
                                                  report.example["independent"])):
            h = min(head, prop.shape[0] - 1)
            for r, (title, value) in enumerate((("propagated", prop), ("independent", ind))):
                ax = fig.add_subplot(rows, cols, r * cols + 3 + j)
                ax.imshow(value[h, :, cell].reshape(grid).numpy(), cmap="viridis")
                ax.set_title(f"stage {stages[j].stage} {title}\nhead {h}, cell {cell}", fontsize=8)
                ax.axis("off")
    fig.suptitle(f"{report.model}: propagated vs independent attention", fontsize=10)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=90)
    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
