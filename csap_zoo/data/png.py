"""PNG writing: label maps and images saved atomically, and a streamed encoder for images of any height.

:func:`save_png` writes a whole array or PIL image through PIL. :func:`write_png` streams a PNG: rows arrive in
bands and go through the PNG filters and a zlib stream straight to the file (written atomically), so an image of
any height is written with memory for one band. Label maps can be written as palette ("P") PNGs
(:func:`label_palette`, ``save_png(..., palette=)``): the stored values stay the class indices and image viewers show
the dataset's colours.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..fileio import atomic_write

__all__ = ["label_palette", "label_png_mode", "save_png", "write_png"]


def label_palette(colours: Sequence[Sequence[int]], count: int) -> bytes:
    """A PNG palette (PLTE data) of ``count`` entries (1..256) for a label image: entry ``i`` is ``colours[i]``,
    entries past the colours given are black (so an ignore index such as 255 shows black unless the palette has a
    colour for it)."""
    count = int(count)
    if not 1 <= count <= 256:
        raise ValueError(f"a PNG palette holds 1..256 entries, asked for {count}")
    table = np.zeros((count, 3), dtype=np.int64)
    given = np.asarray(colours, dtype=np.int64).reshape(-1, 3)[:count]
    if given.size and (given.min() < 0 or given.max() > 255):
        raise ValueError("palette colours must be (R, G, B) values in 0..255")
    table[:len(given)] = given
    return table.astype(np.uint8).tobytes()


def label_png_mode(low: int, high: int, palette: bool = False) -> str:
    """The PNG mode that stores class indices in ``low..high``: 8-bit ("L", or "P" with a ``palette``) up to 255,
    16-bit grayscale ("I;16") up to 65535; anything else cannot be a label PNG (ValueError)."""
    if low < 0 or high > 65535:
        raise ValueError(f"label values must be in 0..65535 to be stored as PNG, got {low}..{high}")
    if high > 255:
        return "I;16"
    return "P" if palette else "L"


def save_png(image: Union[Image.Image, np.ndarray], path: Union[str, os.PathLike],
             palette: Optional[Sequence[Sequence[int]]] = None) -> Path:
    """Write a PNG atomically (``csap_zoo.fileio.atomic_write``).

    Arrays: (H, W, 3) uint8 -> RGB; (H, W) integers -> 8-bit grayscale when all values fit in 0..255, else 16-bit.
    With ``palette`` (one (R, G, B) per class index), an (H, W) label array whose values fit in 0..255 is stored as
    a palette ("P") PNG instead: the stored values are still the class indices, and viewers show the class colours
    (indices without a colour, e.g. the ignore index 255, show black). Labels above 255 cannot be palette indices:
    they stay 16-bit grayscale and ``palette`` is not used.
    """
    path = Path(path)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            if label_png_mode(low, high) == "L":
                image = Image.fromarray(arr.astype(np.uint8, copy=False), mode="L")
                if palette is not None:
                    top = int(arr.max()) if arr.size else 0
                    # an entry for every stored index (PIL also picks the bit depth from the palette's length)
                    image.putpalette(label_palette(palette, min(256, max(len(palette), top + 1))))
            else:
                image = Image.fromarray(arr.astype(np.uint16))
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            image = Image.fromarray(arr.astype(np.uint8, copy=False))
        else:
            raise ValueError(f"cannot save an array of shape {tuple(arr.shape)} as PNG")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            image.save(handle, format="PNG")

    return atomic_write(path, write)


# ---------------------------------------------------------------------- streamed PNG writing
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# mode -> bit depth, colour type, bytes a pixel
_PNG_MODES = {"L": (8, 0, 1), "P": (8, 3, 1), "I;16": (16, 0, 2), "RGB": (8, 2, 3)}
_IDAT_BYTES = 1 << 18  # compressed bytes per IDAT chunk
# cost of a filtered byte in the filter choice: its absolute value as a signed byte
_FILTER_COST = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filter_rows(raw: np.ndarray, prev: np.ndarray, bpp: int, paeth: bool) -> np.ndarray:
    """PNG-filter rows of bytes (h, n) whose previous row is ``prev`` (zeros above the first row): each row gets
    the filter (None, Sub, Up, Average[, Paeth]) with the smallest sum of absolute signed bytes; returns
    (h, 1 + n) uint8 with the filter type first."""
    h, n = raw.shape
    up = np.empty_like(raw)
    up[0] = prev
    up[1:] = raw[:-1]
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    candidates = [raw, raw - left, raw - up, raw - ((left.astype(np.uint16) + up) >> 1).astype(np.uint8)]
    if paeth:
        upleft = np.zeros_like(raw)
        upleft[:, bpp:] = up[:, :-bpp]
        a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        candidates.append(raw - predictor)
    costs = np.stack([_FILTER_COST[f].sum(axis=1, dtype=np.uint32) for f in candidates])
    choice = costs.argmin(axis=0)
    out = np.empty((h, n + 1), dtype=np.uint8)
    out[:, 0] = choice
    for kind, filtered in enumerate(candidates):
        picked = choice == kind
        if picked.any():
            out[picked, 1:] = filtered[picked]
    return out


def _png_bytes(band: np.ndarray, mode: str, width: int, top: int = 255) -> np.ndarray:
    """A band of rows as (h, width * bytes a pixel) uint8 in PNG byte order, after checking its shape and values."""
    arr = np.asarray(band)
    channels = 3 if mode == "RGB" else 1
    shape_ok = arr.ndim == (3 if channels == 3 else 2) and arr.shape[1] == width and (
        channels == 1 or arr.shape[2] == 3)
    if not shape_ok or arr.shape[0] == 0:
        want = f"(rows, {width}, 3)" if channels == 3 else f"(rows, {width})"
        raise ValueError(f"a band of a {mode} PNG must have shape {want} with rows >= 1, got {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"PNG rows must be integers, got dtype {arr.dtype}")
    if mode == "I;16":
        top = 65535
    if (arr.dtype not in (np.uint8, bool) or top < 255) and (int(arr.min()) < 0 or int(arr.max()) > top):
        what = f"palette indices of a {top + 1}-entry palette" if mode == "P" else f"{mode} PNG values"
        raise ValueError(f"{what} must be in 0..{top}, got {int(arr.min())}..{int(arr.max())}")
    if mode == "I;16":
        return arr.astype(">u2").view(np.uint8).reshape(arr.shape[0], width * 2)
    return np.ascontiguousarray(arr, dtype=np.uint8).reshape(arr.shape[0], width * channels)


def write_png(path: Union[str, os.PathLike], bands: Iterable[np.ndarray], size: Tuple[int, int], mode: str = "RGB",
              *, palette: Optional[bytes] = None, compress_level: int = 6) -> Path:
    """Write a PNG of ``size`` = (height, width) from consecutive bands of rows, atomically.

    ``mode``: ``"L"`` (8-bit grayscale; bands (h, W), values 0..255), ``"P"`` (8-bit palette indices; bands (h, W),
    values below the palette's length; ``palette`` is required: the PLTE data, 3 bytes (R, G, B) per entry, 1..256
    entries, e.g. from :func:`label_palette`), ``"I;16"`` (16-bit grayscale; 0..65535) or ``"RGB"`` (8-bit RGB;
    bands (h, W, 3) uint8). Each band is filtered and compressed as it arrives, so memory does not grow with the
    image. Bands that do not add up to ``height`` rows raise a ValueError and leave no file.
    """
    if mode not in _PNG_MODES:
        raise ValueError(f"mode must be one of {sorted(_PNG_MODES)}, got {mode!r}")
    if mode == "P" and palette is None:
        raise ValueError(f"mode must be one of {sorted(_PNG_MODES)}, and mode 'P' needs its palette (palette=, "
                         f"e.g. label_palette(colours, count)); got mode 'P' without one")
    if mode != "P" and palette is not None:
        raise ValueError(f"a palette is only written with mode 'P', got mode {mode!r}")
    if palette is not None:
        palette = bytes(palette)
        if not palette or len(palette) % 3 or len(palette) > 768:
            raise ValueError(f"a PNG palette is 1..256 (R, G, B) entries of 3 bytes, got {len(palette)} bytes")
    top = len(palette) // 3 - 1 if palette is not None else 255
    height, width = (int(v) for v in size)
    if height < 1 or width < 1 or max(height, width) > 2 ** 31 - 1:
        raise ValueError(f"PNG size must be positive (height, width), got {size!r}")
    depth, colour, bpp = _PNG_MODES[mode]

    def write(tmp: str) -> None:
        compressor = zlib.compressobj(compress_level)
        prev = np.zeros(width * bpp, dtype=np.uint8)
        pending = bytearray()
        done = 0
        with open(tmp, "wb") as handle:
            handle.write(_PNG_SIGNATURE)
            handle.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)))
            if palette is not None:
                handle.write(_chunk(b"PLTE", palette))
            for band in bands:
                raw = _png_bytes(band, mode, width, top)
                if done + raw.shape[0] > height:
                    raise ValueError(f"the rows given for a PNG of height {height} are more than that")
                pending += compressor.compress(_filter_rows(raw, prev, bpp, paeth=mode == "RGB").tobytes())
                prev = raw[-1].copy()
                done += raw.shape[0]
                while len(pending) >= _IDAT_BYTES:
                    handle.write(_chunk(b"IDAT", bytes(pending[:_IDAT_BYTES])))
                    del pending[:_IDAT_BYTES]
            if done != height:
                raise ValueError(f"got {done} rows for a PNG of height {height}")
            pending += compressor.flush()
            for start in range(0, len(pending), _IDAT_BYTES):
                handle.write(_chunk(b"IDAT", bytes(pending[start:start + _IDAT_BYTES])))
            handle.write(_chunk(b"IEND", b""))

    return atomic_write(path, write)
