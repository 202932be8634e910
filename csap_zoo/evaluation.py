"""Evaluation: a streaming confusion matrix and the standard semantic-segmentation metrics.

MMSegmentation conventions: pixels whose ground truth is ``ignore_index`` (255) are left out; intersection and
union areas are accumulated over the whole dataset (not averaged per image); a class's IoU is
``intersection / union`` and its accuracy ``intersection / ground-truth area``, NaN when the denominator is 0 (a
class absent from both prediction and ground truth has NaN IoU and accuracy; one only predicted has IoU 0 and NaN
accuracy); mIoU and mAcc are NaN-ignoring means over classes; aAcc is correct pixels / valid pixels.

Units: what people read is in percent, as MMSegmentation and Hugging Face model cards report it (mIoU 91.28):
``csap-zoo eval`` / ``train`` output, ``EvalResult.summary()`` / ``table()``, model cards, ``config.json`` and
``model.metrics``. The Python values that are computed with stay fractions in [0, 1], as they always were:
``EvalResult.aAcc`` / ``mIoU`` / ``mAcc`` / ``iou`` / ``acc``, ``EvalResult.to_dict()`` and ``TrainResult.metrics``.
Their percent views (``EvalResult.mIoU_percent``, ``to_dict(percent=True)``, ``TrainResult.metrics_percent``) and
the model-card values all go through :func:`to_percent`, the one conversion.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .distributed import DistEnv, all_reduce_sum, run_in_rounds
from .fileio import atomic_write

__all__ = ["EvalResult", "Evaluator", "evaluate", "percent_metrics", "to_percent", "write_report"]

_HEADLINE = ("aAcc", "mIoU", "mAcc")


def to_percent(value: Optional[float], digits: Optional[int] = None) -> Optional[float]:
    """A fraction in [0, 1] as a percentage (rounded to ``digits`` decimals when given); None and NaN (undefined
    metrics) stay as they are. The one fraction-to-percent conversion of the package."""
    if value is None or math.isnan(value):
        return value
    pct = 100.0 * float(value)
    return pct if digits is None else round(pct, digits)


def percent_metrics(metrics: Mapping[str, Any], digits: Optional[int] = None) -> Dict[str, Any]:
    """A fraction-valued metrics dict (``EvalResult.to_dict()``, ``TrainResult.metrics``) in percent: aAcc / mIoU
    / mAcc, and per-class values (``IoU`` maps, ``per_class`` entries); other keys are copied unchanged."""
    def convert(key: str, value: Any) -> Any:
        if key in _HEADLINE or key in ("IoU", "Acc"):
            if isinstance(value, Mapping):
                return {k: to_percent(v, digits) for k, v in value.items()}
            return to_percent(value, digits)
        if key == "per_class" and isinstance(value, Mapping):
            return {name: {k: convert(k, v) for k, v in entry.items()} for name, entry in value.items()}
        return value
    return {key: convert(key, value) for key, value in metrics.items()}


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise ValueError(f"label maps must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass
class EvalResult:
    """Metrics as fractions in [0, 1] (per-class arrays hold NaN for undefined entries); ``mIoU_percent`` etc.,
    ``to_dict(percent=True)``, ``summary()`` and ``table()`` give them in percent, the unit that is printed and
    recorded in model cards."""

    aAcc: float
    mIoU: float
    mAcc: float
    iou: np.ndarray
    acc: np.ndarray
    class_names: List[str]
    confusion_matrix: np.ndarray

    @property
    def aAcc_percent(self) -> float:
        """aAcc in percent (NaN when undefined)."""
        return to_percent(self.aAcc)  # type: ignore[return-value]

    @property
    def mIoU_percent(self) -> float:
        """mIoU in percent, as ``csap-zoo eval`` prints it and model cards record it (NaN when undefined)."""
        return to_percent(self.mIoU)  # type: ignore[return-value]

    @property
    def mAcc_percent(self) -> float:
        """mAcc in percent (NaN when undefined)."""
        return to_percent(self.mAcc)  # type: ignore[return-value]

    def to_dict(self, percent: bool = False) -> Dict[str, Any]:
        """Plain-Python summary (NaN values become None): fractions, or percentages with ``percent=True``."""
        def clean(v: float) -> Optional[float]:
            return None if math.isnan(v) else float(v)
        out = {
            "aAcc": clean(self.aAcc), "mIoU": clean(self.mIoU), "mAcc": clean(self.mAcc),
            "per_class": {n: {"IoU": clean(i), "Acc": clean(a)}
                          for n, i, a in zip(self.class_names, self.iou.tolist(), self.acc.tolist())},
        }
        return percent_metrics(out) if percent else out

    def report(self, images: int, protocol: Mapping[str, Any]) -> Dict[str, Any]:
        """What ``csap-zoo eval --json`` writes: aAcc / mIoU / mAcc and each class's IoU and Acc in percent (None
        where undefined), the number of images, how they were evaluated (``protocol``: model, dataset, split,
        inference settings) and the int64 confusion matrix (rows: ground truth), so two runs compare exactly."""
        summary = self.to_dict(percent=True)
        classes = [{"index": i, "name": name, "IoU": _percent_or_none(iou), "Acc": _percent_or_none(acc)}
                   for i, (name, iou, acc) in enumerate(zip(self.class_names, self.iou.tolist(), self.acc.tolist()))]
        return {"unit": "percent", "aAcc": summary["aAcc"], "mIoU": summary["mIoU"], "mAcc": summary["mAcc"],
                "images": int(images), "protocol": dict(protocol), "classes": classes,
                "confusion_matrix": self.confusion_matrix.astype(np.int64).tolist()}

    def card_metrics(self) -> Dict[str, float]:
        """aAcc / mIoU / mAcc in percent rounded to 2 decimals (undefined ones left out): what
        ``model.save_pretrained(folder, metrics=...)`` records in config.json and the model card."""
        values = {k: to_percent(getattr(self, k), 2) for k in ("mIoU", "aAcc", "mAcc")}
        return {k: v for k, v in values.items() if v is not None and not math.isnan(v)}

    def summary(self) -> str:
        """One line: aAcc, mIoU and mAcc in percent."""
        return f"aAcc: {_pct(self.aAcc)}  mIoU: {_pct(self.mIoU)}  mAcc: {_pct(self.mAcc)}"

    def table(self) -> str:
        """Per-class IoU and Acc in percent (``nan`` where undefined), one row per class."""
        width = max([len("class")] + [len(n) for n in self.class_names])
        lines = [f"{'class'.ljust(width)}  {'IoU':>6}  {'Acc':>6}", f"{'-' * width}  {'-' * 6}  {'-' * 6}"]
        for name, iou, acc in zip(self.class_names, self.iou, self.acc):
            lines.append(f"{name.ljust(width)}  {_pct(iou):>6}  {_pct(acc):>6}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n{self.summary()}"


def _percent_or_none(value: float) -> Optional[float]:
    return None if math.isnan(value) else to_percent(value)


def _pct(v: Optional[float]) -> str:
    """A fraction printed as a percentage with 2 decimals; ``nan`` when undefined."""
    pct = to_percent(v)
    return "nan" if pct is None or math.isnan(pct) else f"{pct:.2f}"


class Evaluator:
    """Accumulates a (num_classes x num_classes) confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: number of classes K; valid labels are 0..K-1.
        ignore_index: ground-truth value to leave out (default 255).
        class_names: names for the per-class table (default "class 0", ...).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Optional[Sequence[str]] = None):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [f"class {i}" for i in
                                                                              range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion_matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any, name: Optional[str] = None) -> None:
        """Add one label map (H, W) or a batch (B, H, W) of predictions and ground truths (numpy or torch).

        Raises ValueError when shapes differ, when the ground truth holds values outside 0..K-1 other than the
        ignore index, or when a prediction is outside 0..K-1; ``name`` (e.g. the mask's file) goes in the message.
        """
        where = f"{name}: " if name else ""
        pred_arr, target_arr = _to_numpy(pred), _to_numpy(target)
        if pred_arr.shape != target_arr.shape:
            raise ValueError(f"{where}prediction shape {pred_arr.shape} differs from ground-truth shape "
                             f"{target_arr.shape}; predict at the mask's resolution")
        k = self.num_classes
        valid = target_arr != self.ignore_index
        bad_target = valid & ((target_arr < 0) | (target_arr >= k))
        if bad_target.any():
            values = np.unique(target_arr[bad_target]).tolist()
            raise ValueError(f"{where}ground truth has labels {values[:20]} outside 0..{k - 1} (and not the ignore "
                             f"index {self.ignore_index}); check the dataset's class count and label encoding "
                             f"(e.g. reduce_zero_label)")
        p, t = pred_arr[valid], target_arr[valid]
        bad_pred = (p < 0) | (p >= k)
        if bad_pred.any():
            raise ValueError(f"{where}prediction has labels {np.unique(p[bad_pred]).tolist()[:20]} outside "
                             f"0..{k - 1}; does the model have {k} classes?")
        self.confusion_matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def compute(self) -> EvalResult:
        """Metrics from everything accumulated."""
        cm = self.confusion_matrix.astype(np.float64)
        intersect = np.diag(cm)
        area_label = cm.sum(axis=1)
        area_pred = cm.sum(axis=0)
        union = area_label + area_pred - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, intersect / union, np.nan)
            acc = np.where(area_label > 0, intersect / area_label, np.nan)
        total = area_label.sum()
        a_acc = float(intersect.sum() / total) if total > 0 else float("nan")
        return EvalResult(
            aAcc=a_acc, mIoU=_nanmean(iou), mAcc=_nanmean(acc), iou=iou, acc=acc,
            class_names=list(self.class_names), confusion_matrix=self.confusion_matrix.copy(),
        )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def evaluate(segmenter: Any, dataset: Any, *, limit: Optional[int] = None, progress: bool = True,
             env: Optional[DistEnv] = None) -> EvalResult:
    """Predict every sample of a dataset (``csap_zoo.data.datasets``) and score it.

    Args:
        segmenter: a ``Segmenter`` whose model has the dataset's class count.
        dataset: a reader returning ``(image (H, W, 3) uint8, mask (H, W) int64)`` per index, with ``info`` and
            ``mask_path(i)`` (any object with ``len()`` and index access does, besides those).
        limit: evaluate only the first ``limit`` samples.
        progress: show a progress bar (in a distributed job: one, on rank 0, for the whole job).
        env: the process group of a torchrun job (``csap_zoo.distributed.init_distributed``): each process
            predicts its share of the samples (``shard_indices``), the int64 confusion matrices are summed, and every
            process returns the same result, bit for bit that of one process. A sample that fails in one process
            stops every process with one ``DistributedError`` naming the rank and the mask.
    """
    env = env or DistEnv()
    info = dataset.info
    k = getattr(segmenter, "num_classes", None)
    if k is not None and k != info.num_classes:
        raise ValueError(f"the model predicts {k} classes but the dataset has {info.num_classes}; use a model "
                         f"built for this dataset (e.g. a '.{info.name}' model name)")
    evaluator = Evaluator(info.num_classes, info.ignore_index, info.class_names)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    bar = None
    if progress and env.is_main:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=count, unit="img", desc="eval")
        except ImportError:  # pragma: no cover
            pass

    def score(i: int) -> None:
        image, mask = dataset[i]
        evaluator.update(segmenter.predict(image), mask, name=_sample_path(dataset, "mask_path", i))

    try:
        run_in_rounds(env, count, score, describe=lambda i: _sample_path(dataset, "image_path", i),
                      after_round=None if bar is None else lambda done: bar.update(len(done)))
    finally:
        if bar is not None:
            bar.close()
    evaluator.confusion_matrix = all_reduce_sum(env, evaluator.confusion_matrix)
    return evaluator.compute()


def _sample_path(dataset: Any, method: str, index: int) -> str:
    """``dataset.image_path(i)`` / ``mask_path(i)`` as text, or ``sample i`` for a dataset without paths."""
    path_of = getattr(dataset, method, None)
    return str(path_of(index)) if path_of is not None else f"sample {index}"


def write_report(path: "os.PathLike[str] | str", result: EvalResult, images: int,
                 protocol: Mapping[str, Any]) -> None:
    """Write :meth:`EvalResult.report` to ``path`` as JSON, atomically (a reader never sees half a file); the
    confusion matrix gets one line per row."""
    report = result.report(images, protocol)
    matrix = report.pop("confusion_matrix")
    head = json.dumps(report, indent=2, allow_nan=False)
    rows = ",\n".join("    " + json.dumps(row) for row in matrix)
    text = head[:-2] + ',\n  "confusion_matrix": [\n' + rows + "\n  ]\n}\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)
