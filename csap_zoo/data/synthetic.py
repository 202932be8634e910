"""A generated segmentation dataset for demos and tests: textured shapes on cluttered backgrounds.

Each image holds a few shapes (disc, square, triangle, ring, cross) drawn over a noisy, cluttered background. A
class is a shape with its own texture (stripes, checks, dots, waves, speckle) and colour family; colours, sizes,
angles, texture periods and the clutter vary per image, so a model has to look at texture and shape, not at one
colour. Everything is a function of the seed: the same call writes the same files.

Layout written by :func:`generate_shapes_dataset` (what ``FolderDataset`` and the trainer read)::

    root/classes.txt                 one "name R G B" line per class (index = line number)
    root/train/images/00000.png      RGB images
    root/train/masks/00000.png       8-bit class-index masks (0 = background)
    root/val/images/... root/val/masks/...
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .png import save_png
from .metadata import SHAPES_CLASSES, SHAPES_PALETTE, DatasetInfo, get_dataset_info, write_classes_file

__all__ = ["SHAPES_CLASSES", "SHAPES_PALETTE", "generate_shapes_dataset", "region_logits", "render_shapes_sample",
           "shapes_dataset_info", "write_classes_file"]

# per foreground class: (texture, hue centre in [0, 1))
_STYLE = {1: ("stripes", 0.0), 2: ("checks", 0.58), 3: ("dots", 0.14), 4: ("waves", 0.33), 5: ("speckle", 0.80)}


def shapes_dataset_info() -> DatasetInfo:
    """Class names and palette of the generated dataset."""
    return get_dataset_info("shapes")


def region_logits(num_classes: int, height: int, width: int, regions: int = 12, margin: float = 8.0,
                  seed: int = 0) -> np.ndarray:
    """Float32 (num_classes, height, width) logits shaped like a sure model's: the map is cut into ``regions``
    Voronoi cells, each owned by one random class that is ``margin`` ahead; every value carries unit Gaussian noise.
    For measuring and testing label-map post-processing without trained weights."""
    rng = np.random.default_rng(seed)
    centres = rng.random((regions, 2)) * (height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    cell = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2).argmin(0)
    owner = rng.integers(0, num_classes, regions)[cell]
    logits = rng.standard_normal((num_classes, height, width)).astype(np.float32)
    np.put_along_axis(logits, owner[None], np.take_along_axis(logits, owner[None], 0) + np.float32(margin), 0)
    return logits


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A pattern in [0, 1] of shape (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 8.0)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if kind == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if kind == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return (du * du + dv * dv < (period * 0.3) ** 2).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(2 * math.pi * (u + 2.0 * np.sin(2 * math.pi * v / (3 * period))) / period)
    return (rng.random((h, w)) > 0.5).astype(np.float32)  # speckle


def _shape_mask(kind: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    size = rng.uniform(0.14, 0.32) * min(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    rot = rng.uniform(0, 2 * math.pi)

    def poly(radii: Sequence[float], n: int) -> List[Tuple[float, float]]:
        return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
                for i, r in enumerate(radii)]

    if kind == 1:  # disc
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
    elif kind == 2:  # square
        draw.polygon(poly([size * 1.2] * 4, 4), fill=1)
    elif kind == 3:  # triangle
        draw.polygon(poly([size * 1.3] * 3, 3), fill=1)
    elif kind == 4:  # ring
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
        inner = size * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:  # cross
        arm = size * 0.38
        c, s = math.cos(rot), math.sin(rot)
        for ax, ay in ((c, s), (-s, c)):
            px, py = -ay * arm, ax * arm
            ex, ey = ax * size * 1.2, ay * size * 1.2
            draw.polygon([(cx - ex + px, cy - ey + py), (cx + ex + px, cy + ey + py),
                          (cx + ex - px, cy + ey - py), (cx - ex - px, cy - ey - py)], fill=1)
    return np.asarray(canvas, dtype=bool)


def render_shapes_sample(seed: int, size: Tuple[int, int] = (128, 128), max_shapes: int = 4,
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """One (image (H, W, 3) uint8, mask (H, W) uint8) pair, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = size
    # background: desaturated low-frequency colour noise plus clutter (lines, small blobs), all class 0
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
    shade = _smooth_noise(rng, h, w, int(rng.integers(2, 6)))[..., None]
    image = base[None, None] * (0.6 + 0.8 * shade) + rng.normal(0, 10, (h, w, 3))
    clutter = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in _hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.2, 0.9)))
        x0, y0, x1, y1 = (rng.random(4) * [w, h, w, h]).tolist()
        if rng.random() < 0.5:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(2, 0.08 * min(h, w))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
    image = np.asarray(clutter, dtype=np.float32)
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(SHAPES_CLASSES)))
        region = _shape_mask(cls, rng, h, w)
        texture_kind, hue = _STYLE[cls]
        pattern = _texture(texture_kind, rng, h, w)[..., None]
        bright = _hsv_to_rgb(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
        dark = bright * rng.uniform(0.2, 0.5)
        fill = dark[None, None] + (bright - dark)[None, None] * pattern
        image[region] = fill[region]
        mask[region] = cls
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, mask


def generate_shapes_dataset(root: Union[str, os.PathLike], num_train: int = 200, num_val: int = 50,
                            size: Tuple[int, int] = (128, 128), seed: int = 0) -> Dict[str, Path]:
    """Write the dataset under ``root`` (see the module docstring) and return its folders and classes file.

    Train and validation images come from disjoint seeds; existing files are overwritten.
    """
    root = Path(root)
    out: Dict[str, Path] = {}
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1_000_000)):
        if count <= 0:
            continue
        for kind in ("images", "masks"):
            out[f"{split}_{kind}"] = root / split / kind
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = render_shapes_sample(seed * 10_000_019 + offset + i, size)
            save_png(image, root / split / "images" / f"{i:05d}.png")
            save_png(mask, root / split / "masks" / f"{i:05d}.png")
    out["classes"] = write_classes_file(root / "classes.txt", SHAPES_CLASSES, SHAPES_PALETTE)
    out["root"] = root
    return out
