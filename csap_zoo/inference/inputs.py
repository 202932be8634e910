"""Images in, raw and normalised tensors out: decoding (reduced towards the size the model runs on), the 0-255
scale, channels and the per-channel normalisation of a ``Segmenter``.

Every input becomes a raw (1, C, H, W) tensor on the 0-255 scale: uint8 where the input allows, float32 otherwise.
File paths, PIL images and numpy arrays are decoded by :func:`csap_zoo.data.io.decode_reduced` (grayscale to RGB,
alpha dropped, palettes expanded, 16 bits reduced to 8); tensors are checked here (shape, finite values, channels).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from ..data.io import decode_reduced, reduce_array
from ..models.segmentor import check_finite
from .config import DEFAULT_INPUT_RANGE, check_input_range

__all__ = ["ImageInputs", "split_batch"]

Pair = Tuple[int, int]
# Frames in these folders are csap-zoo's or torch's own: a warning about an input points past them
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _warn_caller(message: str) -> None:
    """Warn at the first frame outside csap_zoo and torch: the user's line (``seg.predict(...)``), however many
    package frames (predict, decode_raw, evaluate, torch's inference_mode wrapper) lie between."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the frame that called this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((_PACKAGE_DIR, _TORCH_DIR)):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


def split_batch(images: Any) -> Tuple[List[Any], bool]:
    """The images one by one (nothing decoded yet), and whether the input was a batch (a list or tuple, or a
    (B, C, H, W) tensor)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            if images.is_floating_point():
                check_finite(images, "(batch, channel, y, x)")
            return list(images), True
        return [images], False
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images")
        return list(images), True
    return [images], False


class ImageInputs:
    """Decodes images into raw 0-255 tensors for a model with ``in_chans`` input channels, and normalises them.

    Args:
        device: where the tensors go.
        in_chans: the model's input channels (RGB images are converted to 1 channel by luma weights).
        mean, std: per-channel normalisation on the 0-255 scale (default: ImageNet's).
        input_range: the (low, high) values of black and white in float tensors and arrays, mapped onto 0-255.
    """

    def __init__(self, device: torch.device, in_chans: int = 3, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, input_range: Sequence[float] = DEFAULT_INPUT_RANGE) -> None:
        self.device = device
        self.in_chans = in_chans
        self.input_range = check_input_range(input_range)
        mean = IMAGENET_MEAN_255 if mean is None else mean
        std = IMAGENET_STD_255 if std is None else std
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean and std need one value per input channel ({in_chans}), got mean={mean!r}, "
                             f"std={std!r}")
        if min(std) <= 0:
            raise ValueError(f"std values must be positive, got {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A raw 0-255 batch as the model's float input."""
        return (x.float() - self.mean) / self.std

    def _check_float_range(self, low_value: float, high_value: float, what: str) -> None:
        """Warn (at the caller's line) when a float image's values do not look like ``input_range``."""
        low, high = self.input_range
        if (low, high) == DEFAULT_INPUT_RANGE:
            if 0.0 < high_value <= 1.0 and low_value >= 0.0:
                _warn_caller(f"float image {what} has all values in [0, 1]; Segmenter expects 0-255 values: pass "
                             f"Segmenter(..., input_range=(0, 1)) or multiply by 255")
            return
        margin = 0.01 * (high - low)
        if low_value < low - margin or high_value > high + margin:
            _warn_caller(f"float image {what} has values in [{low_value:g}, {high_value:g}], outside "
                         f"input_range=({low:g}, {high:g}); check the Segmenter's input_range")

    def _to_255(self, x: Any) -> Any:
        """A float tensor or array on ``input_range`` mapped linearly onto 0-255 (unchanged for the default)."""
        low, high = self.input_range
        if (low, high) == DEFAULT_INPUT_RANGE:
            return x
        return (x - low) * (255.0 / (high - low))

    def decode(self, image: Any, target: Optional[Callable[[int, int], Pair]],
               max_pixels: Optional[int] = None) -> Tuple[torch.Tensor, Pair]:
        """A raw 0-255 (1, C, h, w) tensor (uint8 where the input allows) reduced by an integer factor towards
        ``target(H, W)`` (None: not reduced), and the image's full size (H, W). Image files and PIL images above
        ``max_pixels`` are refused before decoding (None: ``CSAP_ZOO_MAX_PIXELS``, else 2**28; 0: no limit)."""
        if isinstance(image, torch.Tensor):
            t = self._tensor_image(image)
            size = (t.shape[-2], t.shape[-1])
            factor = 1 if target is None else max(1, min(size[0] // target(*size)[0], size[1] // target(*size)[1]))
            if factor > 1:
                if t.dtype == torch.uint8 and t.shape[1] == 3 and t.device.type == "cpu":
                    small = reduce_array(t[0].permute(1, 2, 0).numpy(), factor)
                    t = torch.from_numpy(small).permute(2, 0, 1).unsqueeze(0)
                else:
                    t = F.avg_pool2d(t.float(), factor, stride=factor, ceil_mode=True)
            return t.to(self.device), size
        if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating) and image.size:
            finite = image[np.isfinite(image)]  # non-finite values are refused by the decoder, with their index
            if finite.size:
                self._check_float_range(float(finite.min()), float(finite.max()), "array")
            image = self._to_255(image)
        arr, size = decode_reduced(image, target, max_pixels=max_pixels)
        if not arr.flags.writeable:
            arr = arr.copy()
        tensor = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
        if self.in_chans == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            tensor = (tensor.float() * weights).sum(1, keepdim=True)
        elif self.in_chans != 3:
            raise ValueError(f"the model takes {self.in_chans}-channel input; pass a (C, H, W) tensor with "
                             f"C={self.in_chans} instead of an RGB image")
        return tensor.to(self.device), size

    def _tensor_image(self, t: torch.Tensor) -> torch.Tensor:
        """A (1, C, H, W) tensor on the 0-255 scale: uint8 tensors stay uint8, other ones become float32."""
        if t.dim() != 3:
            raise ValueError(f"expected an image tensor of shape (C, H, W) or a batch (B, C, H, W), got "
                             f"{tuple(t.shape)}")
        if t.shape[0] not in (1, 3, 4, self.in_chans) and t.shape[-1] in (1, 3, 4):
            raise ValueError(f"tensor of shape {tuple(t.shape)} looks channels-last; pass (C, H, W): "
                             f"t.permute(2, 0, 1)")
        if t.shape[1] == 0 or t.shape[2] == 0:
            raise ValueError(f"image tensor has an empty side: {tuple(t.shape)}")
        was_float = t.is_floating_point()
        if was_float:
            check_finite(t, "(channel, y, x)")
        t = t.detach()
        if t.dtype != torch.uint8:
            t = t.to(self.device, torch.float32)
        if was_float and t.numel():
            self._check_float_range(float(t.min()), float(t.max()), "tensor")
            t = self._to_255(t)
        chans = t.shape[0]
        if chans != self.in_chans:
            if self.in_chans == 3 and chans == 1:
                t = t.expand(3, -1, -1)
            elif self.in_chans == 3 and chans == 4:
                t = t[:3]
            else:
                raise ValueError(f"image tensor has {chans} channels, the model takes {self.in_chans}")
        return t.unsqueeze(0)
