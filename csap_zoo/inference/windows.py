"""The model passes of a ``Segmenter``: whole image, sliding windows, and the views of multi-scale + flip.

- whole: one pass over the (resized) image.
- slide: ``crop_size`` windows every ``stride`` pixels; the last window of each row / column is moved back to end
  at the image edge, windows larger than the image shrink to it; overlapping logits are summed and divided by the
  number of windows covering each pixel.
- views: one per ratio in ``ratios`` (applied to the resize scale, or to the native size), plus its horizontal
  mirror with ``flip``; several views' softmax probabilities are averaged.

Memory: results leave as consecutive bands of rows of about ``bands.BAND_ELEMENTS`` values. For a Segmentor the
whole-image pass resizes the head's stride-8 logits band by band; slide windows keep their stride-8 logits too and
are resized into each band of rows, which leaves once every window reaching it is added (the same sums in the same
order as one full-size accumulator of full-size windows). Other models' slide windows are summed a window row at a
time; several views are merged a band of rows at a time.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import keep_ratio_size  # the one keep-ratio rule (training's too)
from ..models.segmentor import Segmentor
from . import bands as _bands  # read as _bands.BAND_ELEMENTS at call time: a test may lower it
from .backends import OpenVINONetwork
from .bands import ResizeStep, label_dtype, resize_rows
from .config import InferenceConfig

__all__ = ["WindowPasses", "merge_views"]

Pair = Tuple[int, int]
Box = Tuple[int, int, int, int]  # (y1, y2, x1, x2)


def _chain_first(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


def _rows_of(bands: Iterable[torch.Tensor], rows: int) -> Iterator[torch.Tensor]:
    """Consecutive (B, K, h, W) bands re-cut into bands of exactly ``rows`` rows (the last one may be shorter)."""
    buf: Optional[torch.Tensor] = None
    for band in bands:
        buf = band if buf is None else torch.cat([buf, band], dim=2)
        band = None
        while buf is not None and buf.shape[2] >= rows:
            box = [buf[:, :, :rows]]
            buf = buf[:, :, rows:] if buf.shape[2] > rows else None  # no view of a band already handed over
            yield box.pop()
    if buf is not None and buf.shape[2]:
        yield buf


class _RowFeeder:
    """Consecutive bands of rows handed out ``n`` rows at a time (as one or more pieces)."""

    def __init__(self, bands: Iterable[torch.Tensor]) -> None:
        self._bands = iter(bands)
        self._left: Optional[torch.Tensor] = None

    def take(self, n: int) -> List[torch.Tensor]:
        pieces = []
        while n > 0:
            if self._left is None:
                self._left = next(self._bands)
            use = min(n, self._left.shape[2])
            pieces.append(self._left[:, :, :use])
            self._left = self._left[:, :, use:] if use < self._left.shape[2] else None
            n -= use
        return pieces


def band_labels(band: torch.Tensor) -> np.ndarray:
    """The arg-max over classes of a (1, K, rows, W) band, in the smallest integer dtype that holds the classes."""
    return band.max(dim=1).indices[0].cpu().numpy().astype(label_dtype(band.shape[1]), copy=False)


def merge_views(views: List[Iterator[torch.Tensor]], width: int) -> Iterator[np.ndarray]:
    """The label map of several views' logits at the same size (each arriving as bands of rows), as bands of rows:
    the views' softmax probabilities summed one band at a time, in view order (the sums of one full-size
    accumulator), then arg-maxed."""
    first = next(views[0])
    step = max(1, _bands.BAND_ELEMENTS // max(first.shape[1] * width, 1))
    views[0] = _chain_first(first, views[0])
    parts = [_rows_of(v, step) for v in views]
    while True:
        merged: Optional[torch.Tensor] = None
        for part in parts:  # one view's band at a time
            band = next(part, None)
            if band is None:
                assert merged is None  # all views end together
                return
            merged = band.softmax(dim=1) if merged is None else merged.add_(band.softmax(dim=1))
            del band
        assert merged is not None
        merged /= len(views)
        yield band_labels(merged)


class WindowPasses:
    """Runs a model over the views of an image by the configured mode (whole or slide).

    Args:
        model: a ``Segmentor``, or any module mapping a normalised batch to logits at input resolution.
        config: the mode, windows and views.
        normalize: maps a raw 0-255 batch to the model's input.
        device: where the model runs (the autocast device).
        network: where a Segmentor's network runs instead of torch (OpenVINO), or None.
        autocast_dtype: autocast dtype for the model (CUDA), or None.
        min_size: the model's minimum input side; smaller inputs are stretched up to it.
    """

    def __init__(self, model: nn.Module, config: InferenceConfig, normalize: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, network: Optional[OpenVINONetwork] = None,
                 autocast_dtype: Optional[torch.dtype] = None, min_size: int = 1) -> None:
        self.model = model
        self.config = config
        self.normalize = normalize
        self.device = device
        self.network = network
        self.autocast_dtype = autocast_dtype
        self.min_size = min_size
        param = next(iter(model.parameters()), None)
        self.param_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    # ------------------------------------------------------------------ one forward
    def _autocast(self) -> ContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.autocast_dtype is not None or x.dtype == self.param_dtype else x.to(self.param_dtype)

    def native(self, x: torch.Tensor) -> torch.Tensor:
        """A Segmentor's raw (stride-8) logits of a normalised batch, on the configured backend, in float32."""
        if self.network is not None:
            return self.network(x.float())
        with self._autocast():
            return self.model(self._model_input(x), upsample=False, crop=False).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits at input resolution of a normalised batch (one pass, whole mode)."""
        if self.network is not None:
            return self.model.logits_at_input(self.native(x), x.shape[-2], x.shape[-1]).contiguous()
        with self._autocast():
            out = self.model(self._model_input(x))
        if out.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the model returned logits of size {tuple(out.shape[-2:])} for an input of size "
                             f"{tuple(x.shape[-2:])}; Segmenter needs logits at input resolution")
        return out.float()

    # ------------------------------------------------------------------ sliding windows
    def slide_boxes(self, height: int, width: int) -> List[Box]:
        """The slide windows (y1, y2, x1, x2) of an image, row-major: every ``stride`` pixels, the last of each row
        and column moved back to end at the image edge, windows larger than the image shrunk to it."""
        (crop_h, crop_w), (stride_h, stride_w) = self.config.crop_size, self.config.stride
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
                boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
        return boxes

    def slide_rows(self, x: torch.Tensor, normalize: bool = False) -> Iterator[torch.Tensor]:
        """Slide-window logits of ``x`` (normalised, or raw 0-255 with ``normalize``: each batch of windows is
        normalised on its own), as consecutive bands of finished rows.

        Windows are summed in row-major order into a buffer of the rows still reachable; rows above the current
        window row's top are final (no later window reaches them) and leave as soon as it starts, divided by their
        window counts: the same sums, in the same order, as one full-size accumulator.
        """
        batch, _, height, width = x.shape
        boxes = self.slide_boxes(height, width)
        total: Optional[torch.Tensor] = None
        count = torch.zeros((1, 1, 0, width), device=x.device)
        top = 0  # image row of total[:, :, 0]
        step = self.config.slide_batch_size
        for start in range(0, len(boxes), step):
            chunk = boxes[start:start + step]
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk], dim=0)
            logits = self.forward(self.normalize(crops) if normalize else crops)
            if total is None:
                total = torch.zeros((batch, logits.shape[1], 0, width), device=x.device)
            for i, (y1, y2, x1, x2) in enumerate(chunk):
                if y1 > top:
                    done = y1 - top
                    yield total[:, :, :done] / count[:, :, :done]
                    total, count, top = total[:, :, done:], count[:, :, done:], y1
                if y2 - top > total.shape[2]:
                    grow = y2 - top - total.shape[2]
                    total = torch.cat([total, total.new_zeros(total.shape[:2] + (grow, width))], dim=2)
                    count = torch.cat([count, count.new_zeros((1, 1, grow, width))], dim=2)
                total[:, :, y1 - top:y2 - top, x1:x2] += logits[i * batch:(i + 1) * batch]
                count[:, :, y1 - top:y2 - top, x1:x2] += 1
        assert total is not None and top + total.shape[2] == height and bool((count > 0).all())
        yield total / count

    def slide_head_rows(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Slide-window logits of a raw 0-255 view ``x`` for a Segmentor, as consecutive bands of rows, without any
        window's logits at full size: each window keeps its head's stride-8 logits, resized band by band
        (:func:`resize_rows`) into the rows being summed; a band leaves once every window reaching it has been
        added, divided by its window counts. The sums of :meth:`slide_rows`, in the same order; for a
        1024x2048 image and 150 classes the full-size accumulator of 1.2 GB becomes a band of 8 MiB."""
        assert isinstance(self.model, Segmentor)
        batch, _, height, width = x.shape
        boxes = self.slide_boxes(height, width)
        windows: List[Tuple[int, int, int, int, _RowFeeder]] = []  # computed, with rows still to add
        done = 0  # boxes computed
        top, step = 0, 1
        num_classes: Optional[int] = None
        while top < height:
            end = min(top + step, height)
            while done < len(boxes) and boxes[done][0] < end:  # every window that may reach this band
                chunk = boxes[done:done + self.config.slide_batch_size]
                done += len(chunk)
                crops = self.normalize(torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk], dim=0))
                low = self.native(crops)
                crops = None
                resized, covered = self.model.logit_geometry(chunk[0][1] - chunk[0][0], chunk[0][3] - chunk[0][2])
                for i, box in enumerate(chunk):
                    own = low[i * batch:(i + 1) * batch]
                    windows.append(box + (_RowFeeder(resize_rows([own], tuple(own.shape[-2:]), resized,
                                                                 keep=covered)),))
                if num_classes is None:
                    num_classes = low.shape[1]
                    step = max(1, _bands.BAND_ELEMENTS // max(batch * num_classes * width, 1))
                    end = min(top + step, height)
                low = None
            assert num_classes is not None
            rows = end - top
            total = x.new_zeros((batch, rows, width, num_classes), dtype=torch.float32).permute(0, 3, 1, 2)
            count = x.new_zeros((1, 1, rows, width), dtype=torch.float32)
            for y1, y2, x1, x2, feeder in windows:  # row-major: the order of one full-size accumulator
                lo, hi = max(y1, top), min(y2, end)
                if lo >= hi:
                    continue
                at = lo - top
                for part in feeder.take(hi - lo):
                    total[:, :, at:at + part.shape[2], x1:x2] += part
                    at += part.shape[2]
                count[:, :, lo - top:hi - top, x1:x2] += 1
            windows = [w for w in windows if w[1] > end]
            box = [total / count]
            total = None
            yield box.pop()
            top = end

    # ------------------------------------------------------------------ one view
    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for a normalised float batch, by the configured mode (whole or slide).

        Inputs below the model's minimum size are stretched up to it and the logits resized back.
        """
        height, width = x.shape[-2:]
        small = height < self.min_size or width < self.min_size
        if small:
            x = F.interpolate(x, size=(max(height, self.min_size), max(width, self.min_size)), mode="bilinear",
                              align_corners=False)
        if self.config.mode == "slide":
            logits = torch.cat(list(self.slide_rows(x)), dim=2)
        else:
            logits = self.forward(x)
        if small:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def view_size(self, height: int, width: int, ratio: float) -> Pair:
        """The size the model sees of an image of this size at one multi-scale ``ratio``."""
        resize = self.config.resize
        if resize is None:
            return max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))
        scale = (int(resize[0] * ratio), int(resize[1] * ratio))
        return keep_ratio_size(height, width, scale)

    def views(self, height: int, width: int) -> List[Tuple[Pair, bool]]:
        """Every view of an image of this size: (size, mirrored), ratio by ratio."""
        flips = (False, True) if self.config.flip else (False,)
        return [(self.view_size(height, width, ratio), flip) for ratio in self.config.ratios for flip in flips]

    def check_whole_size(self, height: int, width: int) -> None:
        limit = self.config.whole_max_pixels
        if limit and height * width > limit:
            raise ValueError(
                f"whole-image inference would run the model on a {height}x{width} input ({height * width:,} pixels), "
                f"above whole_max_pixels={limit:,}; its activations would need many GB. Use sliding windows "
                f"(mode='slide', e.g. --mode slide --crop-size 1024 --stride 768), a resize (--resize LONG SHORT), "
                f"or raise whole_max_pixels (0 = no limit)")

    def head_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, ResizeStep]:
        """A Segmentor's raw (stride-8) logits for a normalised whole view, and the resize that maps them onto it."""
        low = self.native(x)
        return low, self.logit_step(tuple(low.shape[-2:]), x)

    def logit_step(self, low_size: Sequence[int], x: torch.Tensor) -> ResizeStep:
        """The resize that maps a Segmentor's raw logits of size ``low_size`` onto its normalised input ``x``."""
        resized, covered = self.model.logit_geometry(x.shape[-2], x.shape[-1])
        return ResizeStep(tuple(low_size), resized, covered)

    @staticmethod
    def view_input(raw: torch.Tensor, size: Pair) -> torch.Tensor:
        """The raw image resized (bilinear) to a view's ``size``, or as it is when it has that size."""
        if tuple(raw.shape[-2:]) == size:
            return raw
        return F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)

    def view_bands(self, raw: torch.Tensor, size: Pair, flip: bool) -> Iterator[torch.Tensor]:
        """The logits of one view (``raw`` resized to ``size``, mirrored with ``flip`` and mirrored back) as
        consecutive bands of rows at the view's size."""
        x = self.view_input(raw, size)
        if flip:
            x = x.flip(-1)
        height, width = size
        if height < self.min_size or width < self.min_size:
            bands: Iterable[torch.Tensor] = [self.inference(self.normalize(x))]
        elif self.config.mode == "slide":
            bands = self.slide_head_rows(x) if isinstance(self.model, Segmentor) else self.slide_rows(
                x, normalize=True)
        else:
            self.check_whole_size(height, width)
            x = self.normalize(x)
            if isinstance(self.model, Segmentor):  # the head's own logits, resized band by band
                low, step = self.head_logits(x)
                x = None  # several views' generators may be alive at once: keep only their small logits
                bands = resize_rows([low], step.in_size, step.out_size, keep=step.keep)
            else:
                bands = [self.forward(x)]
        for band in bands:
            box = [band.flip(-1) if flip else band]
            band = None  # a suspended generator keeps its locals: keep no reference to a band handed over
            yield box.pop()

    # ------------------------------------------------------------------ several views
    def scores(self, raw: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Merged class scores (1, K, H, W) at the input's size for one raw 0-255 image tensor (1, C, H, W):
        logits for a single view (and False), averaged softmax probabilities for several (and True)."""
        height, width = raw.shape[-2:]
        single = self.config.num_views == 1
        merged: Optional[torch.Tensor] = None
        for ratio in self.config.ratios:
            size = self.view_size(height, width, ratio)
            x = raw if size == (height, width) else F.interpolate(raw, size=size, mode="bilinear",
                                                                   align_corners=False)
            x = self.normalize(x)
            for flip in ((False, True) if self.config.flip else (False,)):
                logits = self.inference(x.flip(-1) if flip else x)
                if flip:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                if single:
                    return logits, False
                probs = logits.softmax(dim=1)
                merged = probs if merged is None else merged + probs
        assert merged is not None
        return merged / self.config.num_views, True

    def labels_and_probs(self, raw: torch.Tensor, size: Pair) -> Tuple[np.ndarray, np.ndarray]:
        """Labels (H, W) and class probabilities (K, H, W) float32 of one raw image tensor whose full size is
        ``size``; the probabilities exist at full size (averaged there for several views), the logits do not."""
        height, width = size
        single = self.config.num_views == 1
        labels: Optional[np.ndarray] = None
        merged: Optional[torch.Tensor] = None
        probs: Optional[np.ndarray] = None
        for view, flip in self.views(height, width):
            y = 0
            for band in resize_rows(self.view_bands(raw, view, flip), view, size):
                rows = band.shape[2]
                if labels is None:
                    labels = np.empty((height, width), dtype=label_dtype(band.shape[1]))
                if single:
                    labels[y:y + rows] = band.max(dim=1).indices[0].cpu().numpy()
                    if probs is None:
                        probs = np.empty((band.shape[1], height, width), dtype=np.float32)
                    probs[:, y:y + rows] = band.softmax(dim=1)[0].cpu().numpy()
                else:
                    if merged is None:
                        merged = torch.zeros((1, band.shape[1], height, width), device=band.device)
                    merged[:, :, y:y + rows] += band.softmax(dim=1)
                y += rows
            assert y == height
        if merged is not None:
            merged /= self.config.num_views
            assert labels is not None
            step = max(1, _bands.BAND_ELEMENTS // max(merged.shape[1] * width, 1))
            for y in range(0, height, step):
                labels[y:y + step] = merged[0, :, y:y + step].max(dim=0).indices.cpu().numpy()
            probs = merged[0].cpu().numpy().astype(np.float32, copy=False)
        assert labels is not None and probs is not None
        return labels, probs
