"""Image and mask reading/writing shared by inference, datasets and visualization.

Decoding rules (``to_rgb_array``): palette images go through their palette, alpha is dropped (the pixels are kept as
stored, as OpenCV-based pipelines do), grayscale is repeated to three channels, and 16-bit images are scaled to
8 bits (value / 257). EXIF orientation is applied to files and PIL images.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS", "ImageLike", "read_image", "read_mask", "save_png", "to_rgb_array",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def _open(path: Union[str, os.PathLike]) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"cannot read {path} as an image ({type(err).__name__}: {err}); "
                         f"is it a valid, complete image file?") from err
    return image


def _pil_to_array(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("RGB", "L"):
        arr = np.asarray(image)
    elif mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(image).astype(np.float64)
        if mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif mode != "F" and (mode.startswith("I;16") or (arr.size and arr.max() > 255)):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    elif mode in ("LA", "La"):
        arr = np.asarray(image.convert("L"))
    else:  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, 1, ...
        arr = np.asarray(image.convert("RGB"))
    return arr


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Decode a file path, PIL image or numpy array into an (H, W, 3) uint8 RGB array.

    Numpy arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped), of dtype uint8, uint16 (scaled
    by 1/257), bool, or float/int on the 0-255 scale.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)
    if isinstance(image, Image.Image):
        arr = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint16:
            arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        elif arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            if not (np.issubdtype(arr.dtype, np.number)):
                raise ValueError(f"unsupported image array dtype {arr.dtype}; use uint8 (0-255)")
            arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"expected a file path, PIL.Image or numpy array, got {type(image).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image has an empty side: shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see the module docstring for the conversions)."""
    return to_rgb_array(Path(path))


def read_mask(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a label mask (one class index per pixel) as an (H, W) int64 array.

    Accepts 8/16-bit grayscale and palette ("P") PNGs, whose stored indices are the labels. Colour (RGB) masks are
    rejected: convert them to class indices first.
    """
    image = _open(path)
    if image.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(image).astype(np.int64)
    raise ValueError(f"{path}: mask has image mode {image.mode!r}; masks must be single-channel class-index images "
                     f"(8/16-bit grayscale or palette PNG), not colour images. Convert colours to class indices.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_png(image: Union[Image.Image, np.ndarray], path: Union[str, os.PathLike]) -> Path:
    """Write a PNG atomically: a temporary file in the same folder, then ``os.replace``.

    Arrays: (H, W, 3) uint8 -> RGB; (H, W) integers -> 8-bit grayscale when all values fit in 0..255, else 16-bit.
    """
    path = Path(path)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError(f"label values must be in 0..65535 to be stored as PNG, got {arr.min()}..{arr.max()}")
            if not arr.size or arr.max() <= 255:
                image = Image.fromarray(arr.astype(np.uint8), mode="L")
            else:
                image = Image.fromarray(arr.astype(np.uint16))
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            image = Image.fromarray(arr.astype(np.uint8))
        else:
            raise ValueError(f"cannot save an array of shape {tuple(arr.shape)} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
