"""Image and mask reading shared by inference, datasets and visualization: decoding, orientation and the pixel
limit.

Decoding rules (``to_rgb_array``): palette images go through their palette, alpha is dropped (the pixels are kept as
stored, as OpenCV-based pipelines do), grayscale is repeated to three channels, and 16-bit images are scaled to
8 bits (value / 257). EXIF orientation is applied to files and PIL images.

Files are closed as soon as they are decoded (multi-frame and truncated files included). Before a file is decoded,
its size from the header is checked against a pixel limit (``max_pixels``; default ``DEFAULT_MAX_PIXELS`` = 2**28,
or the ``CSAP_ZOO_MAX_PIXELS`` environment variable; 0 disables it); PIL's own decompression-bomb check is replaced
by it while this module opens a file. :func:`decode_reduced` decodes to a size reduced by an integer factor
(JPEG: DCT scaling while decoding; other formats: box averaging of the decoded pixels in bands of rows), for
callers that only need a smaller image. :class:`ImageRows` reads a decoded image as converted, oriented bands of
rows, so that no full-size converted copy is made. Writing PNGs is :mod:`csap_zoo.data.png`'s.
"""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageTooLargeError
from ..fileio import not_a_regular_file
from ..settings import MAX_PIXELS_ENV, max_image_pixels

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageLike", "ImageRows", "ImageTooLargeError", "decode_bytes",
    "decode_reduced", "image_format", "mask_array", "max_pixels_limit", "open_rows", "read_image", "read_mask",
    "reduce_array",
    "to_rgb_array",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]
DEFAULT_MAX_PIXELS = 2 ** 28
_BAND_PIXELS = 2 ** 20  # pixels converted / reduced at a time
_PIL_LIMIT_LOCK = threading.Lock()
# EXIF orientation -> the PIL transpose that undoes it (what ImageOps.exif_transpose applies)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def max_pixels_limit(max_pixels: Optional[int] = None) -> Optional[int]:
    """The pixel limit in force: ``max_pixels`` if given, else ``$CSAP_ZOO_MAX_PIXELS``, else
    ``DEFAULT_MAX_PIXELS``; None when the limit is disabled (0 or negative)."""
    if max_pixels is None:
        from_env = max_image_pixels()
        max_pixels = DEFAULT_MAX_PIXELS if from_env is None else from_env
    max_pixels = int(max_pixels)
    return max_pixels if max_pixels > 0 else None


def _check_pixels(width: int, height: int, source: object, max_pixels: Optional[int]) -> None:
    limit = max_pixels_limit(max_pixels)
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{source}: image of {width}x{height} = {width * height:,} pixels exceeds the pixel limit of {limit:,}; "
            f"if the image is trusted, raise the limit with max_pixels=N (Segmenter, InferenceConfig, read_image), "
            f"--max-pixels N on the command line, or the {MAX_PIXELS_ENV} environment variable (0 = no limit)")


def _open_header(handle, path: Path, max_pixels: Optional[int]) -> Image.Image:
    """Image.open on an open file with our pixel limit instead of PIL's decompression-bomb check."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(handle)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    _check_pixels(image.size[0], image.size[1], path, max_pixels)
    return image


def _read_error(path: Path, err: Exception) -> ValueError:
    return ValueError(f"cannot read {path} as an image ({type(err).__name__}: {err}); "
                      f"is it a valid, complete image file?")


@contextmanager
def _image_file(path: Path, max_pixels: Optional[int]) -> Iterator[Image.Image]:
    """The file at ``path`` opened as a PIL image (header read, pixel limit checked); the file is closed on exit."""
    problem = not_a_regular_file(path)
    if problem == "is a folder":
        raise IsADirectoryError(f"{path} is a folder, not an image file: this reads one image (csap-zoo predict and "
                                f"csap_zoo.predict.predict_paths take folders and globs)")
    if problem is not None and problem.startswith("does not exist"):
        raise FileNotFoundError(f"image file not found: {path}" + ("" if problem == "does not exist" else
                                                                   f" ({problem})"))
    if problem is not None:
        raise ValueError(f"cannot read {path} as an image: it {problem}")
    with open(path, "rb") as handle:
        try:
            image = _open_header(handle, path, max_pixels)
        except ImageTooLargeError:
            raise
        except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise _read_error(path, err) from err
        yield image


def _decode_file(path: Union[str, os.PathLike], max_pixels: Optional[int] = None,
                 prepare: Optional[Callable[[Image.Image], None]] = None) -> Image.Image:
    """Open, check the pixel limit, optionally ``prepare`` (e.g. draft) and load a file; the file is closed on
    return, whatever happened."""
    path = Path(path)
    with _image_file(path, max_pixels) as image:
        try:
            if prepare is not None:
                prepare(image)
            image.load()
        except ImageTooLargeError:
            raise
        except Exception as err:
            raise _read_error(path, err) from err
        finally:
            image.fp = None  # the pixels are in memory; never read the (closing) file again
    return image


def _open(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> Image.Image:
    return _decode_file(path, max_pixels)


def _convert_rgb(image: Image.Image, scale16: Optional[bool] = None, unit_float: Optional[bool] = None
                 ) -> np.ndarray:
    """An (h, w) or (h, w, 3) uint8 array for a PIL image of any mode (no orientation applied).

    ``scale16`` / ``unit_float``: the whole image's 16-bit / [0, 1] decisions when ``image`` is one band of it
    (default: decided from ``image`` itself)."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return np.asarray(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(image).astype(np.float64)
        if mode == "F":
            if unit_float is None:
                unit_float = bool(arr.size) and float(arr.max()) <= 1.0
            if unit_float:
                arr = arr * 255.0
        else:
            if scale16 is None:
                scale16 = mode.startswith("I;16") or (bool(arr.size) and float(arr.max()) > 255)
            if scale16:
                arr = arr / 257.0  # 16-bit range -> 8-bit range
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, 1, ...


def _pil_to_array(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    return _convert_rgb(image)


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: PIL's exif_transpose ignores it too
        return 1
    return value if value in _ORIENTATION else 1


def _box_reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block (partial blocks at the right and bottom edges average what they hold)."""
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr).reduce(factor))
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).reduce(factor))


def reduce_array(arr: np.ndarray, factor: int) -> np.ndarray:
    """Box-reduce an (H, W) or (H, W, 3) uint8 array by an integer factor, a band of rows at a time (output size
    ceil(H / factor) x ceil(W / factor))."""
    if factor <= 1:
        return arr
    height, width = arr.shape[:2]
    out = np.empty((math.ceil(height / factor), math.ceil(width / factor)) + arr.shape[2:], dtype=np.uint8)
    band = max(1, _BAND_PIXELS // max(width * factor, 1)) * factor
    for y in range(0, height, band):
        out[y // factor:(y + band) // factor + (1 if y + band > height else 0)] = _box_reduce(arr[y:y + band], factor)
    return out


def _reduce_pil(image: Image.Image, factor: int) -> np.ndarray:
    """Convert (as ``_convert_rgb``) and box-reduce a loaded PIL image a band of rows at a time, so that no
    full-size converted copy exists; (h, w[, 3]) uint8, no orientation applied."""
    width, height = image.size
    scale16 = unit_float = None
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        low, high = image.getextrema()
        scale16 = image.mode.startswith("I;16") or float(high) > 255
        unit_float = float(high) <= 1.0
    if factor <= 1:
        return _convert_rgb(image, scale16, unit_float)
    band = max(1, _BAND_PIXELS // max(width * factor, 1)) * factor
    out: Optional[np.ndarray] = None
    for y in range(0, height, band):
        piece = _convert_rgb(image.crop((0, y, width, min(y + band, height))), scale16, unit_float)
        small = _box_reduce(piece, factor)
        if out is None:
            out = np.empty((math.ceil(height / factor), small.shape[1]) + small.shape[2:], dtype=np.uint8)
        out[y // factor:y // factor + small.shape[0]] = small
    assert out is not None
    return out


def _reduction(height: int, width: int, target: Optional[Tuple[int, int]]) -> int:
    """The largest integer factor that keeps (height, width) at least ``target`` = (h, w) on both sides."""
    if target is None:
        return 1
    return max(1, min(height // max(int(target[0]), 1), width // max(int(target[1]), 1)))


def _oriented(image: Image.Image, arr: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 1:
        return arr
    return np.asarray(Image.fromarray(arr).transpose(_ORIENTATION[orientation]))


def _finish(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image has an empty side: shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def _array_to_uint8(image: np.ndarray) -> np.ndarray:
    arr = image
    if arr.dtype == np.uint16:
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.number)) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"unsupported image array dtype {arr.dtype}; use uint8 (0-255)")
        if np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr)
            if not finite.all():
                bad = np.argwhere(~finite)
                raise ValueError(f"image array has {len(bad)} non-finite value(s) (NaN or Inf), the first at index "
                                 f"{tuple(int(i) for i in bad[0])} of shape {tuple(arr.shape)}; replace them "
                                 f"(e.g. np.nan_to_num) before predicting")
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return arr


def to_rgb_array(image: ImageLike, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode a file path, PIL image or numpy array into an (H, W, 3) uint8 RGB array.

    Numpy arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped), of dtype uint8, uint16 (scaled
    by 1/257), bool, or float/int on the 0-255 scale (NaN / Inf are refused). Files larger than ``max_pixels``
    (see :func:`max_pixels_limit`) are refused before decoding.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _decode_file(image, max_pixels)
    if isinstance(image, Image.Image):
        arr = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        arr = _array_to_uint8(image)
    else:
        raise TypeError(f"expected a file path, PIL.Image or numpy array, got {type(image).__name__}")
    return _finish(arr)


def decode_reduced(
        image: ImageLike,
        target: Optional[Callable[[int, int], Optional[Tuple[int, int]]]] = None,
        max_pixels: Optional[int] = None,
) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Decode like :func:`to_rgb_array`, reduced by the largest integer factor that keeps the result at least
    ``target(height, width)`` on both sides; returns ``(rgb, (height, width))`` with the full (oriented) size.

    JPEG files (and PIL JPEGs not yet loaded) are decoded at a reduced DCT scale; other images are decoded, then
    converted and box-averaged a band of rows at a time. Without ``target`` (or when it allows no reduction) the
    result equals ``to_rgb_array(image)``.
    """
    if isinstance(image, np.ndarray):
        arr = _finish(_array_to_uint8(image))
        size = (arr.shape[0], arr.shape[1])
        factor = _reduction(size[0], size[1], target(*size) if target is not None else None)
        return (reduce_array(arr, factor) if factor > 1 else arr), size
    if not isinstance(image, (str, os.PathLike, Image.Image)):
        raise TypeError(f"expected a file path, PIL.Image or numpy array, got {type(image).__name__}")
    plan: dict = {}

    def prepare(img: Image.Image) -> None:  # before loading: DCT-scaled decoding of JPEGs
        plan["stored"] = img.size
        if img.format != "JPEG" or target is None:
            return
        orientation = _orientation(img)
        width, height = img.size
        swap = orientation in (5, 6, 7, 8)
        wanted = target(*((width, height) if swap else (height, width)))
        if wanted is not None:
            factor = _reduction(height, width, tuple(wanted[::-1]) if swap else wanted)
            if factor > 1:
                img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))

    if isinstance(image, Image.Image):
        _check_pixels(image.size[0], image.size[1], "image", max_pixels)
        if getattr(image, "tile", None):  # not loaded yet
            prepare(image)
        else:
            plan["stored"] = image.size
        image.load()
        pil = image
    else:
        pil = _decode_file(image, max_pixels, prepare=prepare)
    orientation = _orientation(pil)
    swap = orientation in (5, 6, 7, 8)
    stored_w, stored_h = plan.get("stored", pil.size)
    full = (stored_w, stored_h) if swap else (stored_h, stored_w)
    width, height = pil.size
    wanted = target(*full) if target is not None else None
    if wanted is not None and swap:
        wanted = (wanted[1], wanted[0])  # in stored orientation
    factor = _reduction(height, width, wanted)
    if factor == 1 and pil.size == (stored_w, stored_h):
        return to_rgb_array(pil), full
    return _finish(_oriented(pil, _finish(_reduce_pil(pil, factor)), orientation)), full


# EXIF orientation -> the box of the stored image that holds rows [top, bottom) of the oriented image
def _stored_box(orientation: int, stored: Tuple[int, int], top: int, bottom: int) -> Tuple[int, int, int, int]:
    width, height = stored
    if orientation in (1, 2):
        return 0, top, width, bottom
    if orientation in (3, 4):
        return 0, height - bottom, width, height - top
    if orientation in (5, 6):  # transpose, rotate clockwise: oriented rows are stored columns, left to right
        return top, 0, bottom, height
    return width - bottom, 0, width - top, height  # 7, 8: stored columns, right to left


class ImageRows:
    """A loaded PIL image read as bands of (h, W, 3) uint8 RGB rows, converted and oriented exactly as
    :func:`to_rgb_array` does, without a full-size converted copy (only the PIL image is full size)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.orientation = _orientation(image)
        width, height = image.size
        self.size: Tuple[int, int] = (width, height) if self.orientation in (5, 6, 7, 8) else (height, width)
        if self.size[0] == 0 or self.size[1] == 0:
            raise ValueError(f"image has an empty side: size {self.size}")
        self._scale16 = self._unit_float = None
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # the whole image's scaling decisions
            low, high = image.getextrema()
            self._scale16 = image.mode.startswith("I;16") or float(high) > 255
            self._unit_float = float(high) <= 1.0

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows [top, bottom) of the oriented image as (bottom - top, W, 3) uint8."""
        top, bottom = max(0, top), min(bottom, self.size[0])
        if bottom <= top:
            raise ValueError(f"no rows in [{top}, {bottom}) of an image of height {self.size[0]}")
        piece = self.image.crop(_stored_box(self.orientation, self.image.size, top, bottom))
        if self.orientation != 1:
            piece = piece.transpose(_ORIENTATION[self.orientation])
        return _finish(_convert_rgb(piece, self._scale16, self._unit_float))


def open_rows(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> ImageRows:
    """Decode a file (pixel limit checked first, file closed on return) for reading in bands of rows."""
    return ImageRows(_decode_file(path, max_pixels))


def image_format(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> Optional[str]:
    """The PIL format name of an image file ("PNG", "JPEG", ...) from its header, without decoding it (the pixel
    limit is checked)."""
    with _image_file(Path(path), max_pixels) as image:
        try:
            return image.format
        finally:
            image.close()


def read_image(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see the module docstring for the conversions)."""
    return to_rgb_array(Path(path), max_pixels=max_pixels)


def read_mask(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> np.ndarray:
    """Read a label mask (one class index per pixel) as an (H, W) int64 array.

    Accepts 8/16-bit grayscale and palette ("P") PNGs, whose stored indices are the labels. Colour (RGB) masks are
    rejected: convert them to class indices first.
    """
    return mask_array(_open(path, max_pixels), path)


def mask_array(image: Image.Image, source: object) -> np.ndarray:
    """A decoded label mask as an (H, W) int64 array; a colour image is refused, naming ``source``."""
    if image.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(image).astype(np.int64)
    raise ValueError(f"{source}: mask has image mode {image.mode!r}; masks must be single-channel class-index images "
                     f"(8/16-bit grayscale or palette PNG), not colour images. Convert colours to class indices.")


def decode_bytes(data: bytes, source: object, max_pixels: Optional[int] = None) -> Image.Image:
    """An encoded image held in memory (a table cell), decoded with the same pixel limit as a file; ``source``
    names it in errors."""
    import io

    try:
        image = _open_header(io.BytesIO(data), source, max_pixels)  # type: ignore[arg-type]
        image.load()
    except ImageTooLargeError:
        raise
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"cannot decode {source} as an image ({type(err).__name__}: {err}); is the cell a "
                         f"valid, complete encoded image?") from err
    return image
