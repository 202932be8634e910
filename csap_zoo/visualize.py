"""Visualisation: colour masks, overlays on the image, legends of the classes present, PNG output.

Overlays drawn by :func:`render_overlay` (and ``csap-zoo predict``) outline the class boundaries, so that they differ
from the input even where objects already have their class colours. All functions take and return (H, W, 3) uint8
RGB numpy arrays; ``save_png`` writes atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.io import ImageLike, to_rgb_array
from .data.png import save_png
from .data.metadata import DatasetInfo, IGNORE_INDEX

__all__ = ["OUTLINE_COLOUR", "boundaries", "colorize", "legend", "legend_extent", "overlay", "present_classes",
           "render_overlay", "save_png"]

PaletteLike = Union[DatasetInfo, Sequence[Sequence[int]], np.ndarray]
OUTLINE_COLOUR: Tuple[int, int, int] = (255, 255, 255)  # class boundaries in overlays (render_overlay, predict)


def _palette_array(palette: PaletteLike) -> np.ndarray:
    if isinstance(palette, DatasetInfo):
        palette = palette.palette
    arr = np.asarray(palette, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.size == 0 or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"palette must be a non-empty (N, 3) list of RGB colours in 0..255, got shape "
                         f"{tuple(arr.shape)}")
    return arr.astype(np.uint8)


def _labels_array(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be an (H, W) integer array, got shape {tuple(arr.shape)} dtype {arr.dtype}")
    return arr


def colorize(labels, palette: PaletteLike, ignore_index: int = IGNORE_INDEX,
             ignore_color: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """An (H, W, 3) uint8 colour mask: each class index painted with its palette colour, ignore pixels in
    ``ignore_color``. Labels outside the palette (other than ``ignore_index``) raise a ValueError."""
    arr = _labels_array(labels)
    colours = _palette_array(palette)
    ignored = arr == ignore_index
    bad = (~ignored) & ((arr < 0) | (arr >= len(colours)))
    if bad.any():
        values = np.unique(arr[bad])[:10].tolist()
        raise ValueError(f"labels {values} have no palette colour (palette has {len(colours)} entries, "
                         f"ignore index {ignore_index})")
    out = colours[np.where(ignored, 0, arr)]
    out[ignored] = ignore_color
    return out


def boundaries(labels, ignore_index: int = IGNORE_INDEX, above=None, below=None) -> np.ndarray:
    """An (H, W) bool mask of the class boundaries: pixels (other than ``ignore_index``) with a 4-neighbour of
    another label, so both sides of a boundary are marked. ``above`` / ``below``: the label rows just above / below
    ``labels`` when it is a band of a larger map (their last / first row is used), so that a map drawn band by band
    gets the boundaries of the whole map; without them the map's edge is not a boundary."""
    arr = _labels_array(labels)
    parts, top = [arr], 0
    if above is not None and len(above):
        parts.insert(0, _labels_array(above)[-1:])
        top = 1
    if below is not None and len(below):
        parts.append(_labels_array(below)[:1])
    full = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    if full.shape[1] != arr.shape[1]:
        raise ValueError(f"rows above / below have {full.shape[1]} columns, the labels {arr.shape[1]}")
    edge = np.zeros(full.shape, dtype=bool)
    vertical = full[1:] != full[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = full[:, 1:] != full[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge = edge[top:top + arr.shape[0]]
    edge &= arr != ignore_index
    return edge


def overlay(image: ImageLike, labels, palette: PaletteLike, alpha: float = 0.5,
            ignore_index: int = IGNORE_INDEX, outline: Optional[Tuple[int, int, int]] = None,
            edges: Optional[np.ndarray] = None) -> np.ndarray:
    """The image blended with its colour mask: ``(1 - alpha) * image + alpha * colour``; ignore pixels keep the
    image. ``alpha`` in [0, 1].

    ``outline``: an (R, G, B) colour painted over the class boundaries (``edges``, default
    :func:`boundaries` of ``labels``), so that regions stay visible where the image already has the class colours;
    None draws no boundaries."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_array(image)
    arr = _labels_array(labels)
    if arr.shape != rgb.shape[:2]:
        raise ValueError(f"labels of size {arr.shape} do not match the image of size {rgb.shape[:2]}")
    colour = colorize(arr, palette, ignore_index=ignore_index).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    keep = arr == ignore_index
    blended[keep] = rgb[keep]
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if outline is not None:
        mask = boundaries(arr, ignore_index) if edges is None else np.asarray(edges, dtype=bool)
        if mask.shape != arr.shape:
            raise ValueError(f"edges of size {mask.shape} do not match the labels of size {arr.shape}")
        out[mask] = _outline_colour(outline)
    return out


def _outline_colour(outline: Sequence[int]) -> np.ndarray:
    colour = np.asarray(outline, dtype=np.int64)
    if colour.shape != (3,) or colour.min() < 0 or colour.max() > 255:
        raise ValueError(f"outline must be an (R, G, B) colour in 0..255, got {outline!r}")
    return colour.astype(np.uint8)


def _legend_layout(class_ids: Sequence[int], info: DatasetInfo, height: Optional[int], swatch: int, pad: int):
    """Width, height and the drawing steps of a legend panel (shared by ``legend`` and ``legend_extent``)."""
    font = ImageFont.load_default()
    names = [f"{i}: {info.class_names[i]}" if 0 <= i < info.num_classes else f"{i}: ?" for i in class_ids]
    row = max(swatch, 12) + pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([int(probe.textlength(n, font=font)) for n in names] + [60])
    width = pad * 3 + swatch + text_w
    total_h = height if height is not None else max(row * len(names) + pad, row + pad)
    fits = max((total_h - pad) // row, 0)
    shown = names if len(names) <= fits else names[:max(fits - 1, 0)]
    steps: List[Tuple[str, tuple, object]] = []
    for k, (cid, name) in enumerate(zip(class_ids, shown)):
        y = pad + k * row
        colour = tuple(info.palette[cid]) if 0 <= cid < info.num_classes else (0, 0, 0)
        steps.append(("box", (pad, y, pad + swatch - 1, y + swatch - 1), colour))
        steps.append(("text", (pad * 2 + swatch, y), name))
    if len(shown) < len(names) and fits > 0:
        steps.append(("text", (pad, pad + len(shown) * row), f"+{len(names) - len(shown)} more"))
    return width, max(total_h, 1), steps, font


def legend(class_ids: Sequence[int], info: DatasetInfo, height: Optional[int] = None,
           swatch: int = 14, pad: int = 4, rows: Optional[int] = None) -> np.ndarray:
    """A white panel listing the given classes with their colour swatches, as (H, W, 3) uint8.

    ``height`` fixes the panel height (entries that do not fit are summarised as "+N more"). ``rows`` returns only
    the top ``rows`` rows of that panel (with :func:`legend_extent`, the rest is known to be white).
    """
    width, total_h, steps, font = _legend_layout(class_ids, info, height, swatch, pad)
    panel = Image.new("RGB", (width, total_h if rows is None else max(1, min(rows, total_h))), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for kind, where, what in steps:
        if kind == "box":
            draw.rectangle(list(where), fill=what, outline=(0, 0, 0))
        else:
            draw.text(where, what, fill=(0, 0, 0), font=font)
    return np.asarray(panel)


def legend_extent(class_ids: Sequence[int], info: DatasetInfo, height: Optional[int] = None,
                  swatch: int = 14, pad: int = 4) -> int:
    """How many top rows of ``legend(class_ids, info, height)`` can hold anything but white; the rows below are
    white. Lets a tall panel be drawn as its top part only."""
    width, total_h, steps, font = _legend_layout(class_ids, info, height, swatch, pad)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bottom = 0
    for kind, where, what in steps:
        if kind == "box":
            bottom = max(bottom, where[3] + 1)
        else:
            bottom = max(bottom, int(probe.textbbox(where, what, font=font)[3]) + 1)
    return min(total_h, bottom + 2)  # a margin for anti-aliased glyph edges


def present_classes(labels, ignore_index: int = IGNORE_INDEX) -> List[int]:
    """Sorted class indices that occur in a label map (ignore pixels excluded)."""
    arr = _labels_array(labels)
    values = np.unique(arr)
    return [int(v) for v in values if v != ignore_index]


def render_overlay(image: ImageLike, labels, info: DatasetInfo, alpha: float = 0.5,
                   with_legend: bool = True, max_legend_rows: int = 20,
                   outline: Optional[Tuple[int, int, int]] = OUTLINE_COLOUR) -> np.ndarray:
    """Overlay plus, on its right, a legend of the classes present, as one (H', W', 3) uint8 image.

    Class boundaries are drawn in ``outline`` (default white; None: none): a blend alone can look like the input
    where objects already have their class colours. The legend is as tall as the image, or up to
    ``max_legend_rows`` entries tall for short images (the overlay is then padded with white at the bottom); classes
    that do not fit are summarised as "+N more".
    """
    blended = overlay(image, labels, info, alpha=alpha, ignore_index=info.ignore_index, outline=outline)
    if not with_legend:
        return blended
    classes = present_classes(labels, info.ignore_index)
    natural = legend(classes[:max_legend_rows], info).shape[0]
    height = max(blended.shape[0], natural)
    panel = legend(classes, info, height=height)
    if blended.shape[0] < height:
        pad = np.full((height - blended.shape[0], blended.shape[1], 3), 255, dtype=np.uint8)
        blended = np.concatenate([blended, pad], axis=0)
    return np.concatenate([blended, panel], axis=1)
