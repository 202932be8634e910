"""Label maps from a model's low-resolution logits: bilinear resize (align_corners=False), then arg-max over classes.

A segmentation head predicts at stride 8; the label map is wanted at the image's size. Resizing every class to
every output pixel and arg-maxing (the reference) touches ``classes x H x W`` values, as many as the network's
own work for a 150-class model at 512x512. Two tools here:

- :func:`resize_rows`: the banded resize itself (bands of output rows, classes innermost), for callers that need
  the resized scores (probabilities, several views, slide windows).
- :func:`label_map_bands`: the label map of one chain of resizes (the head's logits -> the model's input size ->
  the image's size), equal to ``resize_rows`` + arg-max label for label (for every finite input; non-finite
  logits take the reference), but computed only where it can differ from a
  constant. Each output pixel is a convex combination of a small block of source pixels (2x2 for one resize, 3x3
  for two), computed by float operations that are monotone in every source value. So a class whose largest value
  on the block is below a lower bound of the best class's value anywhere in it (the best block-minimum, or for one
  step the corner means of the corners' top classes), by more than the operations' rounding bound, can never win
  there; where a single class survives, the pixel takes it without arithmetic; elsewhere only the
  surviving classes are interpolated, by the same operations in the same order as ``resize_rows`` (the same
  float values, so the same arg-max, ties going to the lower class index). Inside regions where a trained model
  is sure, that is most pixels; where it is not (noise, near-ties everywhere) the function falls back to the
  reference, so it is never much slower than it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BAND_ELEMENTS", "ResizeStep", "label_dtype", "label_map_bands", "linear_indices", "resize_rows"]

Pair = Tuple[int, int]
AxisMap = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

BAND_ELEMENTS = 2 ** 21  # values per band of rows when resizing / arg-maxing (8 MiB in float32)
# Rounding bound of one resize step, in units of the largest |logit|: seven float32 operations on values bounded
# by it, with weights in [0, 1] summing to 1 within an ulp; 64 ulps leaves a wide margin.
_STEP_ROUNDING = 64 * 2.0 ** -24
# ... plus an absolute bound: below the smallest normal float32 (subnormal logits) rounding no longer scales with
# the values, each operation may be off by half the subnormal spacing (2**-150); 64 of those per step.
_STEP_ROUNDING_ABSOLUTE = 64 * 2.0 ** -150
_MAX_BLOCK = 4  # source block side beyond which (a downsampling step) the reference is used
# Cost of the shortcut in reference values (one class resized to one pixel and arg-maxed): per interpolated
# candidate value, by number of resize steps, and per output pixel (the label gathers); measured on the CPU.
_VALUE_COST = {1: 12.0, 2: 48.0}
_PIXEL_COST = 4.0
# Share of blocks whose top class changes inside them above which the logits are noise-like (every such block needs
# several classes interpolated, usually dozens): the reference is used without building the rest of the plan.
_MAX_CHANGING = 0.9


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype that holds ``num_classes`` labels (uint8 up to 256 classes, else int32)."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int32)


def linear_indices(out_size: int, in_size: int, device: torch.device) -> AxisMap:
    """Source indices (i0, i1) and weights (w0, w1) of each output position of a linear resize from ``in_size`` to
    ``out_size`` with align_corners=False (the rule of ``F.interpolate(mode="bilinear")``)."""
    scale = torch.tensor(float(in_size), dtype=torch.float32, device=device) / float(out_size)
    src = ((torch.arange(out_size, dtype=torch.float32, device=device) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.float()).clamp_(0, 1)
    return i0, i1, 1 - w1, w1


def _lerp_columns(rows: torch.Tensor, j0: torch.Tensor, j1: torch.Tensor, b0: torch.Tensor,
                  b1: torch.Tensor) -> torch.Tensor:
    """``rows[:, :, j0] * b0 + rows[:, :, j1] * b1`` for (B, rows, w, K) rows, with one temporary fewer."""
    left = rows[:, :, j0].mul_(b0)
    return left.add_(rows[:, :, j1].mul_(b1))


def resize_rows(
        bands: Iterable[torch.Tensor],
        in_size: Pair,
        out_size: Pair,
        keep: Optional[Pair] = None,
        band_elements: int = BAND_ELEMENTS,
) -> Iterator[torch.Tensor]:
    """Bilinear resize (align_corners=False) of a (B, K, in_h, in_w) map that arrives as consecutive bands of rows,
    yielded as consecutive bands of output rows of about ``band_elements`` values each.

    ``keep`` = (rows, cols) produces only the top-left part of the output (a crop of the resized map). Only the
    source rows the current output band needs are kept, so the full output never exists at once. The bands are
    (B, K, rows, W) views of channels-last memory (classes innermost), which is what an arg-max over classes wants.
    The values equal ``F.interpolate``'s up to float rounding.
    """
    in_h, in_w = in_size
    out_h, out_w = out_size
    keep_h, keep_w = keep or out_size
    if (in_h, in_w) == (out_h, out_w):
        done = 0
        for band in bands:
            if done >= keep_h:
                break
            band = band[:, :, :keep_h - done, :keep_w]
            done += band.shape[2]
            yield band
        return
    # The arithmetic runs with the classes innermost, (B, rows, W, K): the column gathers then copy whole class
    # vectors and the caller's arg-max over classes reads contiguous memory.
    source = (band.permute(0, 2, 3, 1).contiguous() for band in bands)
    buf = next(source)
    lo = 0
    i0, i1, a0, a1 = linear_indices(out_h, in_h, buf.device)
    j0, j1, b0, b1 = (t[:keep_w] for t in linear_indices(out_w, in_w, buf.device))
    a0, a1, b0, b1 = a0[:, None, None], a1[:, None, None], b0[:, None], b1[:, None]
    step = max(1, band_elements // max(buf.shape[0] * buf.shape[3] * keep_w, 1))
    for o in range(0, keep_h, step):
        end = min(o + step, keep_h)
        need = int(i1[end - 1]) + 1
        while lo + buf.shape[1] < need:
            buf = torch.cat([buf, next(source)], dim=1)
        start = int(i0[o])
        if start > lo:  # rows no later output row reads
            buf = buf[:, start - lo:]
            lo = start
        if need - start <= 2 * (end - o):  # upsampling: interpolate each source row across once
            rows = buf[:, :need - lo]
            rows = _lerp_columns(rows, j0, j1, b0, b1)
            top, bottom = rows[:, i0[o:end] - lo], rows[:, i1[o:end] - lo]
        else:  # downsampling: only the source rows that are read
            top = _lerp_columns(buf[:, i0[o:end] - lo], j0, j1, b0, b1)
            bottom = _lerp_columns(buf[:, i1[o:end] - lo], j0, j1, b0, b1)
        # gathered rows are fresh tensors: weigh them in place (the same products and sum as top*a0 + bottom*a1)
        top.mul_(a0[o:end]).add_(bottom.mul_(a1[o:end]))
        # a suspended generator keeps its locals: hand the band over without keeping a reference to it
        box = [top.permute(0, 3, 1, 2)]
        top = bottom = rows = None
        yield box.pop()


@dataclass(frozen=True)
class ResizeStep:
    """One bilinear resize of a chain: ``in_size`` -> ``out_size``, keeping the top-left ``keep`` part (default:
    all of it)."""

    in_size: Pair
    out_size: Pair
    keep: Optional[Pair] = None

    @property
    def kept(self) -> Pair:
        return self.keep or self.out_size


def _reference_bands(low: torch.Tensor, steps: Sequence[ResizeStep], band_elements: int) -> Iterator[np.ndarray]:
    """resize_rows through the chain, then the arg-max of each band: what :func:`label_map_bands` must equal."""
    bands: Iterable[torch.Tensor] = [low]
    for step in steps:
        bands = resize_rows(bands, step.in_size, step.out_size, keep=step.keep, band_elements=band_elements)
    dtype = label_dtype(low.shape[1])
    for band in bands:
        part = band.max(dim=1).indices[0].cpu().numpy().astype(dtype, copy=False)
        band = None
        yield part


def _axis_maps(steps: Sequence[ResizeStep], axis: int, device: torch.device) -> List[AxisMap]:
    return [tuple(t[:step.kept[axis]] for t in linear_indices(step.out_size[axis], step.in_size[axis], device))
            for step in steps]  # type: ignore[misc]


def _block_origin(maps: Sequence[AxisMap]) -> Tuple[torch.Tensor, int]:
    """For each final output position along one axis: the first source index of the block it reads, and the block
    side (the same for all positions). Index maps are non-decreasing, so the block runs from the chain of i0s to
    the chain of i1s."""
    first, last = maps[-1][0], maps[-1][1]
    for i0, i1, _, _ in reversed(maps[:-1]):
        first, last = i0[first], i1[last]
    return first, int((last - first).max()) + 1 if first.numel() else 1


def _chain_values(flat: torch.Tensor, shape: Pair, rows: Sequence[AxisMap], cols: Sequence[AxisMap], level: int,
                  y: torch.Tensor, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The values (N, C) at output positions (y, x) (N,) of resize step ``level`` for classes (N, C): the
    operations of :func:`resize_rows` in its order, so the same float32 values."""
    if level < 0:
        height, width = shape
        return flat[(classes * height + y[:, None]) * width + x[:, None]]
    i0, i1, a0, a1 = rows[level]
    j0, j1, b0, b1 = cols[level]
    y0, y1, x0, x1 = i0[y], i1[y], j0[x], j1[x]
    c0, c1 = b0[x][:, None], b1[x][:, None]
    top = _chain_values(flat, shape, rows, cols, level - 1, y0, x0, classes) * c0
    top += _chain_values(flat, shape, rows, cols, level - 1, y0, x1, classes) * c1
    bottom = _chain_values(flat, shape, rows, cols, level - 1, y1, x0, classes) * c0
    bottom += _chain_values(flat, shape, rows, cols, level - 1, y1, x1, classes) * c1
    top *= a0[y][:, None]
    bottom *= a1[y][:, None]
    return top.add_(bottom)


def label_map_bands(low: torch.Tensor, steps: Sequence[ResizeStep],
                    band_elements: int = BAND_ELEMENTS) -> Iterator[np.ndarray]:
    """The label map of one image's logits ``low`` (1, K, h, w) resized through ``steps`` (each step's input is
    the previous step's kept output), as consecutive bands of rows in :func:`label_dtype`.

    Equal, value for value, to running :func:`resize_rows` through the steps and arg-maxing each band (ties go to
    the lower class index), but only the classes that can still win a pixel are interpolated there; see the
    module docstring. Falls back to that reference where the shortcut does not pay (or cannot be proven: a
    downsampling step, non-finite logits).
    """
    if low.dim() != 4 or low.shape[0] != 1:
        raise ValueError(f"label_map_bands takes one image's logits (1, K, h, w), got {tuple(low.shape)}")
    steps = [s for s in steps if not (s.in_size == s.out_size and s.kept == s.in_size)]
    if not steps or any(s.in_size == s.out_size for s in steps) or low.shape[-2:] != steps[0].in_size:
        yield from _reference_bands(low, steps, band_elements)
        return
    plan = _Plan.build(low, steps)
    if plan is None:
        yield from _reference_bands(low, steps, band_elements)
        return
    yield from plan.bands(band_elements)


def _block_extremes(logits: torch.Tensor, block_h: int, block_w: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class, the largest and smallest value of the ``block_h`` x ``block_w`` block starting at each source
    pixel, and the logits padded for such blocks (blocks running past the bottom / right edge repeat its last
    row / column, as the clamped indices do)."""
    padded = F.pad(logits[None], (0, block_w - 1, 0, block_h - 1), mode="replicate")[0]
    _, height, width = logits.shape
    high = low = padded[:, :height]
    for dy in range(1, block_h):
        high, low = torch.maximum(high, padded[:, dy:dy + height]), torch.minimum(low, padded[:, dy:dy + height])
    row_high, row_low = high, low
    high, low = row_high[:, :, :width], row_low[:, :, :width]
    for dx in range(1, block_w):
        high = torch.maximum(high, row_high[:, :, dx:dx + width])
        low = torch.minimum(low, row_low[:, :, dx:dx + width])
    return high, low, padded


_SUBSETS = torch.tensor([[1.0 / bin(m).count("1") if m >> j & 1 else 0.0 for j in range(4)] for m in range(1, 16)])


def _corner_mix_floor(logits: torch.Tensor, padded: torch.Tensor, tops: torch.Tensor) -> torch.Tensor:
    """A lower bound of the best class's value anywhere in each 2x2 block, sharper than the best block-minimum
    where two regions meet (each region's class is low on the other side).

    For any set T of classes, the best value at a pixel is at least T's mean there, a convex combination of T's
    corner means, so at least their minimum. T ranges over the non-empty subsets of the four corners' top
    classes. The bound is reached by some class of T on some corner, so a class always stays possible."""
    _, height, width = logits.shape
    shifted = [padded[:, dy:dy + height, dx:dx + width] for dy in (0, 1) for dx in (0, 1)]
    corner_tops = [tops[None, dy:dy + height, dx:dx + width] for dy in (0, 1) for dx in (0, 1)]  # (1, h, w) each
    values = torch.stack([torch.cat([corner.gather(0, top) for corner in shifted])
                          for top in corner_tops])  # (class of corner j, value at corner i, h, w)
    means = torch.einsum("sj,jihw->sihw", _SUBSETS.to(logits.device), values)  # (subset, corner, h, w)
    return means.amin(dim=1).amax(dim=0)


def _pow2_caps(counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Candidate counts rounded up to a power of two (at most ``num_classes``): pixels are interpolated in groups
    of equal width, so that a few wide blocks do not widen every pixel."""
    return torch.clamp(2 ** torch.ceil(torch.log2(counts.clamp(min=1).float())), max=num_classes).long()


@dataclass
class _Plan:
    """What the shortcut precomputes at the logits' resolution: per block, its sole possible class (or -1 - slot)
    and, for the others, the sorted classes that can still win (and, for one resize step, their 2x2 values)."""

    flat: torch.Tensor          # the logits, (K * h * w,)
    shape: Pair                 # (h, w)
    rows: List[AxisMap]
    cols: List[AxisMap]
    origin_y: torch.Tensor      # block row of each output row
    origin_x: torch.Tensor      # block column of each output column
    code: torch.Tensor          # (h, w): the block's class, or -1 - slot for blocks with several candidates
    candidates: torch.Tensor    # (slots, C max): sorted candidate classes, padded with the first one
    caps: torch.Tensor          # (slots,): candidate count rounded up to a power of two
    corners: Optional[torch.Tensor]  # one step: (slots, C max, 2, 2) the candidates' values on the block
    num_classes: int

    @classmethod
    def build(cls, low: torch.Tensor, steps: Sequence[ResizeStep]) -> Optional["_Plan"]:
        logits = low[0].float()
        num_classes, height, width = logits.shape
        if num_classes <= 2 * _PIXEL_COST:  # the labels' own gathers would cost what the reference does
            return None
        largest = float(logits.abs().amax())
        if not np.isfinite(largest):
            return None
        device = logits.device
        rows, cols = _axis_maps(steps, 0, device), _axis_maps(steps, 1, device)
        (origin_y, block_h), (origin_x, block_w) = _block_origin(rows), _block_origin(cols)
        if max(block_h, block_w) > _MAX_BLOCK:
            return None
        block_h, block_w = max(block_h, 2), max(block_w, 2)  # (a superset of a block changes nothing)
        tops = logits.permute(1, 2, 0).contiguous().argmax(dim=-1)  # each source pixel's top class (classes inner)
        tops = torch.cat([tops, tops[-1:].expand(block_h - 1, -1)])  # padded as the blocks read it
        tops = torch.cat([tops, tops[:, -1:].expand(-1, block_w - 1)], dim=1)
        corner = tops[:height, :width]
        changing = (corner != tops[1:height + 1, :width]) | (corner != tops[:height, 1:width + 1]) | (
            corner != tops[1:height + 1, 1:width + 1])
        if float(changing.float().mean()) > _MAX_CHANGING:  # noise-like logits: the reference at once
            return None
        block_max, block_min, padded = _block_extremes(logits, block_h, block_w)
        tolerance = 2 * len(steps) * (_STEP_ROUNDING * largest + _STEP_ROUNDING_ABSOLUTE)
        floor = block_min.amax(dim=0)  # no pixel of the block has a best value below this
        if len(steps) == 1:
            floor = torch.maximum(floor, _corner_mix_floor(logits, padded, tops))
        possible = block_max >= (floor - tolerance)  # (K, h, w); never empty (see _corner_mix_floor)
        counts = possible.sum(dim=0)
        several = counts > 1
        caps = _pow2_caps(counts, num_classes)
        # weigh the shortcut's work against the reference's before doing any more of it
        pixels = torch.bincount(origin_y, minlength=height)[:, None] * torch.bincount(origin_x, minlength=width)
        out_pixels = origin_y.numel() * origin_x.numel()
        work = float((pixels * caps * several).sum()) * _VALUE_COST[len(steps)] + out_pixels * _PIXEL_COST
        if len(steps) not in _VALUE_COST or work > out_pixels * num_classes:
            return None
        slots = several.nonzero(as_tuple=True)
        # the top class of a block's first pixel is always possible (it reaches every lower bound used), so for a
        # block with one possible class it is that class
        code = tops[:height, :width].clone()
        code[slots] = -1 - torch.arange(slots[0].numel(), device=device)
        widest = int(counts[slots].max()) if slots[0].numel() else 1
        order = torch.where(possible[:, slots[0], slots[1]].t(), torch.arange(num_classes, device=device),
                            num_classes)
        candidates = order.sort(dim=1).values[:, :widest]
        candidates = torch.where(candidates < num_classes, candidates, candidates[:, :1])
        corners = None
        if len(steps) == 1:  # the 2x2 source values of each block (the padding repeats the clamped edge)
            sy, sx = slots[0][:, None, None, None], slots[1][:, None, None, None]
            dy = torch.arange(2, device=device)[None, None, :, None]
            dx = torch.arange(2, device=device)[None, None, None, :]
            corners = padded[candidates[:, :, None, None], sy + dy, sx + dx]
        return cls(logits.reshape(-1), (height, width), rows, cols, origin_y, origin_x, code, candidates,
                   caps[slots], corners, num_classes)

    def _values(self, y: torch.Tensor, x: torch.Tensor, slot: torch.Tensor, width: int,
                classes: torch.Tensor) -> torch.Tensor:
        """The candidates' interpolated values (N, width) at output positions (y, x): the operations of
        :func:`resize_rows` in its order."""
        if self.corners is None:
            return _chain_values(self.flat, self.shape, self.rows, self.cols, len(self.rows) - 1, y, x, classes)
        (_, _, a0, a1), (_, _, b0, b1) = self.rows[0], self.cols[0]
        v = self.corners[slot, :width]  # (N, width, 2, 2)
        c0, c1 = b0[x][:, None], b1[x][:, None]
        top = v[:, :, 0, 0] * c0
        top += v[:, :, 0, 1] * c1
        bottom = v[:, :, 1, 0] * c0
        bottom += v[:, :, 1, 1] * c1
        top *= a0[y][:, None]
        bottom *= a1[y][:, None]
        return top.add_(bottom)

    def bands(self, band_elements: int) -> Iterator[np.ndarray]:
        dtype = label_dtype(self.num_classes)
        out_h, out_w = int(self.origin_y.numel()), int(self.origin_x.numel())
        step = max(1, band_elements // max(out_w, 1))
        for top in range(0, out_h, step):
            labels = self.code[self.origin_y[top:top + step]][:, self.origin_x]  # (rows, W)
            ys, xs = (labels < 0).nonzero(as_tuple=True)
            if ys.numel():
                slot = -1 - labels[ys, xs]
                cap = self.caps[slot]
                for width in torch.unique(cap).tolist():  # pixels grouped by how many classes they need
                    pick = (cap == width).nonzero(as_tuple=True)[0]
                    chosen = slot[pick]
                    classes = self.candidates[chosen, :width]
                    values = self._values(ys[pick] + top, xs[pick], chosen, width, classes)
                    winner = values.max(dim=1).indices
                    labels[ys[pick], xs[pick]] = classes.gather(1, winner[:, None])[:, 0]
            yield labels.cpu().numpy().astype(dtype, copy=False)
