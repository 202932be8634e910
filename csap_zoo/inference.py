"""Inference: images in, label maps out.

``Segmenter`` wraps a segmentation model (a ``Segmentor`` or any module mapping a normalised (B, C, H, W) float batch
to logits at input resolution) with preprocessing, whole / sliding-window / multi-scale + flip inference and
postprocessing back to each image's original size::

    seg = Segmenter(create_model("csap_tiny.ade20k"), resize=(2048, 512))
    labels = seg.predict("photo.jpg")                     # (H, W) int64 class indices
    labels, probs = seg.predict(img, return_probs=True)   # probs: (num_classes, H, W) float32

Conventions (MMSegmentation's test-time ones):

- Inputs: file paths, PIL images, numpy (H, W[, C]) arrays and torch (C, H, W) / (B, C, H, W) tensors, all on the
  0-255 scale by default (uint8; uint16 arrays are scaled by 1/257; float tensors and arrays are taken as 0-255).
  Float inputs on another scale say so with ``Segmenter(..., input_range=(0, 1))`` (any (low, high) pair, mapped
  linearly onto 0-255); a float tensor whose values all lie in [0, 1] under the default range gets a warning
  pointing at the caller's line. Grayscale is repeated to RGB, alpha is dropped, palette images are expanded, 16-bit
  images are reduced to 8 bits (see ``csap_zoo.data.io``).
- ``resize=(long, short)`` rescales each image, keeping its aspect ratio, to the largest size whose long side is at
  most ``long`` and short side at most ``short`` (ADE20K / COCO-Stuff evaluate at (2048, 512)); ``None`` keeps the
  native size. The default, ``"auto"``, is the checkpoint's own evaluation size (``model.data_config.test_size``,
  what ``csap-zoo predict`` uses), or the native size for a model without one; so ``Segmenter(model)`` and the
  command line agree, and ``Segmenter(model, resize=None)`` asks for the native size explicitly. Predictions are
  resized (bilinear on the logits) back to the original size before the argmax.
- ``mode="slide"`` runs ``crop_size`` windows every ``stride`` pixels; the last window of each row/column is moved
  back to end at the image edge; overlapping logits are summed and divided by the number of windows covering each
  pixel. Windows larger than the image shrink to the image.
- Multi-scale + flip: one view per ratio in ``ratios`` (applied to the resize scale, or to the native size), plus
  its horizontal mirror when ``flip``; the views' softmax probabilities are averaged.
- Images smaller than the model's minimum size (32 px for the built-in models) are stretched up to that size along
  the short side(s) before the model and the logits are resized back, so 1x1 images work.
- ``amp="bf16"`` / ``"fp16"`` runs the model under ``torch.autocast`` (logits are merged in float32). fp16 autocast is
  CUDA-only here: asking for it on the CPU raises a ValueError (use ``"bf16"`` or ``None`` there). Without autocast
  the normalised input is cast to the model's parameter dtype (e.g. a ``model.half()`` on CUDA).
- Tensors with NaN or Inf values are refused (ValueError naming how many and the first index).

Memory (``predict``): an image larger than twice the largest view the model runs on is first reduced by an integer
factor while decoding (JPEG: DCT scaling; other files, PIL images, arrays and tensors: box averaging a band of rows
at a time), so the float image handed to the model is never built at full size when the model runs smaller. The
view's logits are resized back and arg-maxed a band of rows at a time (bilinear, align_corners=False, computed by
index arithmetic that matches ``F.interpolate`` to float rounding; :mod:`csap_zoo.labelmap`). For Segmentors the
whole-image pass resizes the head's stride-8 logits band by band, and a single view's label map comes straight
from them by :func:`csap_zoo.labelmap.label_map_bands` (the same labels, interpolating only the classes that can
still win a pixel); slide windows keep their stride-8 logits too and are resized into each band of rows, which
leaves once every window reaching it is added (the same sums in the same order as one full-size accumulator of
full-size windows). Other models' slide windows are summed a window row at a time. Several views (multi-scale /
flip) are merged a band of rows at a time. So a (K, H, W) float logit map of the full image
never exists, except with ``return_probs`` (the returned probabilities, averaged at full size for several views).
``predict_paths`` goes further: its label maps never exist at full size either, and both PNGs are written by a
streaming encoder, so its peak is the decoded image plus a constant. Files above ``max_pixels`` (default 2**28,
``CSAP_ZOO_MAX_PIXELS``) are refused before decoding, and ``mode="whole"`` refuses model inputs above
``whole_max_pixels`` (default 4096 * 4096) with a ValueError that suggests slide mode or a resize, instead of
running out of memory inside the model.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backends import OpenVINONetwork, check_backend
from .data.io import ImageLike, decode_reduced, reduce_array
from .data.metadata import DatasetInfo, custom_dataset_info, get_dataset_info
from .data.transforms import keep_ratio_size as _keep_ratio_size  # the one keep-ratio rule (training's too)
from .labelmap import ResizeStep, label_map_bands, resize_rows
from .labelmap import label_dtype as _label_dtype
from .models.fused import optimize_for_inference
from .constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from .models.segmentor import Segmentor, check_finite

__all__ = ["AUTO_RESIZE", "IMAGENET_MEAN", "IMAGENET_STD", "InferenceConfig", "Segmenter", "resize_rows"]

IMAGENET_MEAN = IMAGENET_MEAN_255
IMAGENET_STD = IMAGENET_STD_255
InputLike = Union[ImageLike, torch.Tensor]
Pair = Tuple[int, int]

_BAND_ELEMENTS = 2 ** 21  # logit values per band of rows when resizing / arg-maxing (8 MiB in float32)
DEFAULT_WHOLE_MAX_PIXELS = 4096 * 4096
AUTO_RESIZE = "auto"  # InferenceConfig.resize: the model's data_config.test_size, else native size
DEFAULT_INPUT_RANGE = (0.0, 255.0)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_AMP_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
               "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _pair(value: Union[int, Sequence[int]], what: str) -> Pair:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{what} must be a positive int or an (height, width) pair of positive ints, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass
class InferenceConfig:
    """How a ``Segmenter`` runs the model.

    Attributes:
        mode: ``"whole"`` (one pass over the image) or ``"slide"`` (overlapping windows).
        crop_size: slide window (height, width).
        stride: slide step (height, width).
        resize: keep-ratio target scale (long, short), e.g. (2048, 512); None = native size; ``"auto"`` (the
            default) = the model's ``data_config.test_size`` when it has one, else native size (a ``Segmenter``
            replaces it with what it resolved to).
        ratios: multi-scale ratios (1.0 alone = single scale).
        flip: also run each scale horizontally mirrored and average.
        slide_batch_size: how many slide windows go through the model at once.
        max_pixels: refuse image files (and PIL images) with more pixels before decoding them; None: the
            ``CSAP_ZOO_MAX_PIXELS`` environment variable, else 2**28; 0: no limit.
        whole_max_pixels: in whole mode, refuse model inputs with more pixels (use slide mode or a resize for
            larger images); 0: no limit.
    """

    mode: str = "whole"
    crop_size: Pair = (512, 512)
    stride: Pair = (341, 341)
    resize: Union[Pair, None, str] = AUTO_RESIZE
    ratios: Tuple[float, ...] = (1.0,)
    flip: bool = False
    slide_batch_size: int = 4
    max_pixels: Optional[int] = None
    whole_max_pixels: int = DEFAULT_WHOLE_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        self.crop_size = _pair(self.crop_size, "crop_size")
        self.stride = _pair(self.stride, "stride")
        if isinstance(self.resize, str):
            if self.resize != AUTO_RESIZE:
                raise ValueError(f"resize must be (long, short), None (native size) or {AUTO_RESIZE!r} (the model's "
                                 f"test size), got {self.resize!r}")
        elif self.resize is not None:
            self.resize = _pair(self.resize, "resize")
        if isinstance(self.ratios, (int, float)):
            self.ratios = (float(self.ratios),)
        self.ratios = tuple(float(r) for r in self.ratios)
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"ratios must be a non-empty list of positive numbers, got {self.ratios!r}")
        if self.slide_batch_size < 1:
            raise ValueError(f"slide_batch_size must be >= 1, got {self.slide_batch_size}")
        for name in ("max_pixels", "whole_max_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer (0 = no limit), got {value!r}")

    @property
    def num_views(self) -> int:
        return len(self.ratios) * (2 if self.flip else 1)

    @classmethod
    def for_dataset(cls, name: Optional[str], tta: bool = False, **overrides: Any) -> "InferenceConfig":
        """The standard evaluation setting of a dataset: ADE20K / COCO-Stuff resize to (2048, 512) and run whole;
        Cityscapes runs 1024x1024 windows with stride 768 at native size. ``tta`` adds ratios 0.5-1.75 and flip.
        Without a dataset, ``resize`` stays ``"auto"`` (the model's own test size)."""
        args: dict = {}
        if name is not None:  # the dataset's protocol lives with its metadata
            args.update(get_dataset_info(name).evaluation)
        if tta:
            args.update(ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
        args.update(overrides)
        return cls(**args)


def _warn_caller(message: str) -> None:
    """Warn at the first frame outside csap_zoo and torch: the user's line (``seg.predict(...)``), however many
    package frames (predict, decode_raw, evaluate, torch's inference_mode wrapper) lie between."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the frame that called this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((_PACKAGE_DIR, _TORCH_DIR)):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


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


class Segmenter:
    """Preprocessing, inference and postprocessing around a segmentation model.

    Args:
        model: a ``Segmentor`` (or any module: normalised (B, C, H, W) float -> (B, K, H, W) logits).
        config: an ``InferenceConfig``; keyword overrides of its fields may be given directly
            (``Segmenter(model, mode="slide", crop_size=512, stride=341)``). Its ``resize="auto"`` (the default)
            becomes the model's ``data_config.test_size`` (keep-ratio, as ``csap-zoo predict`` runs), or None
            (native size) when the model has none; pass ``resize=None`` for the native size explicitly.
        mean, std: per-channel normalisation on the 0-255 scale; default: the model's ``data_config`` (which
            travels with checkpoint weights), else ImageNet's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375).
        device: where to run; the model is moved there (default: where the model's parameters are).
        amp: None, ``"bf16"`` or ``"fp16"`` (CUDA only) autocast for the model.
        dataset_info: class names and palette for visualisation; default from the model's ``data_config``
            (class names / palette, else its dataset tag), else generated names and colours.
        optimize: run a fused, channels_last copy of the model (:func:`csap_zoo.optimize_for_inference`; same
            outputs up to float rounding, the model passed in is left untouched). ``"auto"`` (default) does so
            for a ``Segmentor`` on the CPU without autocast; True for any ``Segmentor``; False never.
        input_range: the (low, high) values of black and white in float tensors and float numpy arrays,
            mapped linearly onto 0-255 before normalisation: (0, 255) by default, ``(0, 1)`` for
            ``torchvision.transforms.ToTensor``-style inputs. Integer inputs (uint8, uint16, ...) keep their own
            scale.
        backend: where a Segmentor's network runs: ``"torch"`` (default: no extra package, any device, autocast)
            or ``"openvino"`` (CPU; converted once per input shape and cached on disk, see
            :mod:`csap_zoo.backends`). Pre-processing is the same for both; a whole-image label map is resized
            and arg-maxed inside OpenVINO where the full-size scores fit its limit (the same labels up to float
            rounding ties), by the torch code otherwise.
        backend_cache_dir: the cache root for the OpenVINO backend's converted models (default ``CSAP_ZOO_CACHE``
            or ``~/.cache/csap_zoo``; False: memory only).
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[InferenceConfig] = None,
            *,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None,
            device: Optional[Union[str, torch.device]] = None,
            amp: Optional[str] = None,
            dataset_info: Optional[DatasetInfo] = None,
            optimize: Union[bool, str] = "auto",
            input_range: Sequence[float] = DEFAULT_INPUT_RANGE,
            backend: str = "torch",
            backend_cache_dir: Any = None,
            **config_overrides: Any,
    ) -> None:
        config = config or InferenceConfig()
        if config_overrides:
            valid = {f.name for f in dataclasses.fields(InferenceConfig)}
            unknown = sorted(set(config_overrides) - valid)
            if unknown:
                raise TypeError(f"unknown Segmenter option(s) {unknown}; valid ones are {sorted(valid)} "
                                f"plus mean, std, device, amp, dataset_info, optimize, input_range, backend, "
                                f"backend_cache_dir")
            config = dataclasses.replace(config, **config_overrides)
        data_config = getattr(model, "data_config", None)
        if config.resize == AUTO_RESIZE:  # the checkpoint's own evaluation size, the one the CLI uses
            test_size = getattr(data_config, "test_size", None)
            config = dataclasses.replace(config, resize=tuple(test_size) if test_size else None)
        self.config = config
        self.input_range = self._check_input_range(input_range)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.backend = check_backend(backend)
        self.network: Optional[OpenVINONetwork] = None
        if self.backend == "openvino":
            if not isinstance(model, Segmentor):
                raise ValueError(f"backend='openvino' runs a csap_zoo Segmentor's network; got a "
                                 f"{type(model).__name__} (use backend='torch')")
            if self.device.type != "cpu" or amp is not None:
                raise ValueError("backend='openvino' runs on the CPU in float32: leave device and amp unset, or use "
                                 "backend='torch'")
            self.network = OpenVINONetwork(self.model, cache_dir=backend_cache_dir)
            optimize = False  # OpenVINO fuses on its own; the PyTorch model stays as given
        if optimize not in (True, False, "auto"):
            raise ValueError(f"optimize must be True, False or 'auto', got {optimize!r}")
        if isinstance(model, Segmentor) and (
                optimize is True or (optimize == "auto" and self.device.type == "cpu" and amp is None)):
            self.model = optimize_for_inference(self.model)
        param = next(iter(self.model.parameters()), None)
        self.param_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        self.in_chans = int(getattr(model, "in_chans", 3))
        self.min_size = int(getattr(model, "min_size", 1))
        self.num_classes = getattr(model, "num_classes", None)
        if mean is None:
            mean = getattr(data_config, "mean", None) or IMAGENET_MEAN
        if std is None:
            std = getattr(data_config, "std", None) or IMAGENET_STD
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"mean and std need one value per input channel ({self.in_chans}), got mean={mean!r}, "
                             f"std={std!r}")
        if min(std) <= 0:
            raise ValueError(f"std values must be positive, got {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.amp_dtype = self._check_amp(amp)
        if config.mode == "slide" and min(config.crop_size) < self.min_size:
            raise ValueError(f"crop_size {config.crop_size} is below the model's minimum input size {self.min_size}")
        self._dataset_info = dataset_info

    @staticmethod
    def _check_input_range(value: Sequence[float]) -> Tuple[float, float]:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"input_range must be a (low, high) pair of numbers, e.g. (0, 1), got {value!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"input_range must be a finite (low, high) pair with high > low, got {value!r}")
        return low, high

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

    def _check_amp(self, amp: Optional[str]) -> Optional[torch.dtype]:
        if amp is None or amp is False or amp == "none":
            return None
        if isinstance(amp, torch.dtype):
            dtype = amp
        else:
            if str(amp).lower() not in _AMP_DTYPES:
                raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
            dtype = _AMP_DTYPES[str(amp).lower()]
        if self.device.type == "cpu" and dtype == torch.float16:
            raise ValueError("fp16 autocast is only supported on CUDA here; on the CPU use amp='bf16' or amp=None")
        return dtype

    @property
    def dataset_info(self) -> DatasetInfo:
        """Class names and palette: the given ones, else the model's dataset tag's, else generated."""
        if self._dataset_info is None:
            data_config = getattr(self.model, "data_config", None)
            tag = getattr(data_config, "dataset", None) or getattr(getattr(self.model, "config", None), "dataset",
                                                                     None)
            names = getattr(data_config, "class_names", None)
            info = None
            if names:
                info = custom_dataset_info(names, getattr(data_config, "palette", None), name=tag or "custom")
            elif tag:
                try:
                    info = get_dataset_info(tag)
                except ValueError:
                    info = None
            k = self.num_classes
            if info is None or (k is not None and info.num_classes != k):
                if k is None:
                    raise ValueError("the model has no num_classes attribute; pass dataset_info=... to Segmenter")
                info = custom_dataset_info([f"class {i}" for i in range(k)], name="custom")
            self._dataset_info = info
        return self._dataset_info

    # ------------------------------------------------------------------ preprocessing
    def _to_tensors(self, images: Any) -> Tuple[List[torch.Tensor], bool]:
        """Raw (1, C, H, W) float tensors on the 0-255 scale, and whether the input was a batch."""
        items, batched = self._inputs(images)
        return [self.decode_raw(item, None)[0].float() for item in items], batched

    def _inputs(self, images: Any) -> Tuple[List[Any], bool]:
        """The images one by one (nothing decoded yet), and whether the input was a batch."""
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

    def decode_target(self, height: int, width: int) -> Pair:
        """The largest view the model runs on for an image of this size (decoding may reduce down to it)."""
        sizes = [self._view_size(height, width, r) for r in self.config.ratios]
        return max(s[0] for s in sizes), max(s[1] for s in sizes)

    def decode_raw(self, image: Any, target: Optional[Any]) -> Tuple[torch.Tensor, Pair]:
        """A raw 0-255 (1, C, h, w) tensor (uint8 where the input allows) reduced towards ``target(H, W)``, and the
        image's full size (H, W)."""
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
        arr, size = decode_reduced(image, target, max_pixels=self.config.max_pixels)
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

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    # ------------------------------------------------------------------ model passes
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.amp_dtype is not None or x.dtype == self.param_dtype else x.to(self.param_dtype)

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        """A Segmentor's raw (stride-8) logits of a normalised batch, on the configured backend, in float32."""
        if self.network is not None:
            return self.network(x.float())
        with self._autocast():
            return self.model(self._model_input(x), upsample=False, crop=False).float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.network is not None:
            return self.model.logits_at_input(self._native(x), x.shape[-2], x.shape[-1]).contiguous()
        with self._autocast():
            out = self.model(self._model_input(x))
        if out.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the model returned logits of size {tuple(out.shape[-2:])} for an input of size "
                             f"{tuple(x.shape[-2:])}; Segmenter needs logits at input resolution")
        return out.float()

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self._slide_rows(x)), dim=2)

    def _slide_rows(self, x: torch.Tensor, normalize: bool = False) -> Iterator[torch.Tensor]:
        """Slide-window logits of ``x`` (normalised, or raw 0-255 with ``normalize``: each batch of windows is
        normalised on its own), as consecutive bands of finished rows.

        Windows are summed in row-major order into a buffer of the rows still reachable; rows above the current
        window row's top are final (no later window reaches them) and leave as soon as it starts, divided by their
        window counts: the same sums, in the same order, as one full-size accumulator.
        """
        batch, _, height, width = x.shape
        boxes = self._slide_boxes(height, width)
        total: Optional[torch.Tensor] = None
        count = torch.zeros((1, 1, 0, width), device=x.device)
        top = 0  # image row of total[:, :, 0]
        step = self.config.slide_batch_size
        for start in range(0, len(boxes), step):
            chunk = boxes[start:start + step]
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk], dim=0)
            logits = self._forward(self._normalize(crops) if normalize else crops)
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

    def _slide_boxes(self, height: int, width: int) -> List[Tuple[int, int, int, int]]:
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

    def _slide_head_rows(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Slide-window logits of a raw 0-255 view ``x`` for a Segmentor, as consecutive bands of rows, without any
        window's logits at full size: each window keeps its head's stride-8 logits, resized band by band
        (:func:`resize_rows`) into the rows being summed; a band leaves once every window reaching it has been
        added, divided by its window counts. The sums of :meth:`_slide_rows`, in the same order; for a
        1024x2048 image and 150 classes the full-size accumulator of 1.2 GB becomes a band of 8 MiB."""
        assert isinstance(self.model, Segmentor)
        batch, _, height, width = x.shape
        boxes = self._slide_boxes(height, width)
        windows: List[Tuple[int, int, int, int, "_RowFeeder"]] = []  # computed, with rows still to add
        done = 0  # boxes computed
        top, step = 0, 1
        num_classes: Optional[int] = None
        while top < height:
            end = min(top + step, height)
            while done < len(boxes) and boxes[done][0] < end:  # every window that may reach this band
                chunk = boxes[done:done + self.config.slide_batch_size]
                done += len(chunk)
                crops = self._normalize(torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk], dim=0))
                low = self._native(crops)
                crops = None
                resized, covered = self.model.logit_geometry(chunk[0][1] - chunk[0][0], chunk[0][3] - chunk[0][2])
                for i, box in enumerate(chunk):
                    own = low[i * batch:(i + 1) * batch]
                    windows.append(box + (_RowFeeder(resize_rows([own], tuple(own.shape[-2:]), resized,
                                                                 keep=covered)),))
                if num_classes is None:
                    num_classes = low.shape[1]
                    step = max(1, _BAND_ELEMENTS // max(batch * num_classes * width, 1))
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

    @torch.inference_mode()
    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for a normalised float batch, by the configured mode (whole or slide).

        Inputs below the model's minimum size are stretched up to it and the logits resized back.
        """
        height, width = x.shape[-2:]
        small = height < self.min_size or width < self.min_size
        if small:
            x = F.interpolate(x, size=(max(height, self.min_size), max(width, self.min_size)), mode="bilinear",
                              align_corners=False)
        logits = self._slide(x) if self.config.mode == "slide" else self._whole(x)
        if small:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def _view_size(self, height: int, width: int, ratio: float) -> Pair:
        resize = self.config.resize
        if resize is None:
            return max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))
        scale = (int(resize[0] * ratio), int(resize[1] * ratio))
        return _keep_ratio_size(height, width, scale)

    @torch.inference_mode()
    def scores(self, raw: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Merged class scores (1, K, H, W) at the input's size for one raw 0-255 image tensor (1, C, H, W).

        Returns (scores, are_probabilities): logits for a single view, averaged softmax probabilities for several.
        """
        height, width = raw.shape[-2:]
        single = self.config.num_views == 1
        merged: Optional[torch.Tensor] = None
        for ratio in self.config.ratios:
            size = self._view_size(height, width, ratio)
            x = raw if size == (height, width) else F.interpolate(raw, size=size, mode="bilinear",
                                                                   align_corners=False)
            x = self._normalize(x)
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

    # ------------------------------------------------------------------ bounded-memory prediction
    def _check_whole_size(self, height: int, width: int) -> None:
        limit = self.config.whole_max_pixels
        if limit and height * width > limit:
            raise ValueError(
                f"whole-image inference would run the model on a {height}x{width} input ({height * width:,} pixels), "
                f"above whole_max_pixels={limit:,}; its activations would need many GB. Use sliding windows "
                f"(mode='slide', e.g. --mode slide --crop-size 1024 --stride 768), a resize (--resize LONG SHORT), "
                f"or raise whole_max_pixels (0 = no limit)")

    def _head_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, ResizeStep]:
        """A Segmentor's raw (stride-8) logits for a normalised whole view, and the resize that maps them onto it."""
        low = self._native(x)
        return low, self._logit_step(tuple(low.shape[-2:]), x)

    def _logit_step(self, low_size: Pair, x: torch.Tensor) -> ResizeStep:
        """The resize that maps a Segmentor's raw logits of size ``low_size`` onto its normalised input ``x``."""
        resized, covered = self.model.logit_geometry(x.shape[-2], x.shape[-1])
        return ResizeStep(tuple(low_size), resized, covered)

    @staticmethod
    def _view_input(raw: torch.Tensor, size: Pair) -> torch.Tensor:
        """The raw image resized (bilinear) to a view's ``size``, or as it is when it has that size."""
        if tuple(raw.shape[-2:]) == size:
            return raw
        return F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)

    def _view_bands(self, raw: torch.Tensor, size: Pair, flip: bool) -> Iterator[torch.Tensor]:
        """The logits of one view (``raw`` resized to ``size``, mirrored with ``flip`` and mirrored back) as
        consecutive bands of rows at the view's size."""
        x = self._view_input(raw, size)
        if flip:
            x = x.flip(-1)
        height, width = size
        if height < self.min_size or width < self.min_size:
            bands: Iterable[torch.Tensor] = [self.inference(self._normalize(x))]
        elif self.config.mode == "slide":
            bands = self._slide_head_rows(x) if isinstance(self.model, Segmentor) else self._slide_rows(
                x, normalize=True)
        else:
            self._check_whole_size(height, width)
            x = self._normalize(x)
            if isinstance(self.model, Segmentor):  # the head's own logits, resized band by band
                low, step = self._head_logits(x)
                x = None  # several views' generators may be alive at once: keep only their small logits
                bands = resize_rows([low], step.in_size, step.out_size, keep=step.keep)
            else:
                bands = [self._whole(x)]
        for band in bands:
            box = [band.flip(-1) if flip else band]
            band = None  # a suspended generator keeps its locals: keep no reference to a band handed over
            yield box.pop()

    def label_bands(self, raw: torch.Tensor, size: Pair) -> Iterator[np.ndarray]:
        """The label map (``size`` = (H, W)) of one raw image tensor as consecutive bands of rows, in the smallest
        integer dtype that holds the classes. Several views are merged band by band (their generators run side by
        side; the same sums in the same order as one full-size accumulator), so no full-size map is built."""
        height, width = size
        view = self._view_size(height, width, self.config.ratios[0])
        if (self.config.num_views == 1 and self.config.mode == "whole" and isinstance(self.model, Segmentor)
                and min(view) >= self.min_size):
            # one view: the label map straight from the head's logits, interpolating only classes that can win
            self._check_whole_size(*view)
            x = self._normalize(self._view_input(raw, view))
            if self.network is not None:  # resize + arg-max inside OpenVINO where the scores fit
                steps = [self._logit_step(self.network.native_shape(tuple(x.shape))[-2:], x), ResizeStep(view, size)]
                if self.network.fits_label_graph(tuple(x.shape), steps):
                    yield self.network.label_map(x, steps)[0]
                    return
            low, step = self._head_logits(x)
            x = None
            yield from label_map_bands(low, [step, ResizeStep(view, size)], band_elements=_BAND_ELEMENTS)
            return
        views = [resize_rows(self._view_bands(raw, view, flip), view, size)
                 for view in (self._view_size(height, width, r) for r in self.config.ratios)
                 for flip in ((False, True) if self.config.flip else (False,))]
        if len(views) == 1:
            for band in views[0]:
                part = band.max(dim=1).indices[0].cpu().numpy().astype(_label_dtype(band.shape[1]), copy=False)
                band = None
                yield part
            return
        first = next(views[0])
        step = max(1, _BAND_ELEMENTS // max(first.shape[1] * width, 1))
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
            yield merged.max(dim=1).indices[0].cpu().numpy().astype(_label_dtype(merged.shape[1]), copy=False)

    def _predict_one(self, raw: torch.Tensor, size: Pair, return_probs: bool) -> Tuple[np.ndarray,
                                                                                    Optional[np.ndarray]]:
        """Labels (H, W) in the smallest integer dtype that holds the classes, and probabilities (K, H, W) when
        asked, for one raw image tensor whose full size is ``size``; see the module docstring for the memory."""
        height, width = size
        if not return_probs:
            filled: Optional[np.ndarray] = None
            y = 0
            for part in self.label_bands(raw, size):
                if filled is None:
                    filled = np.empty((height, width), dtype=part.dtype)
                filled[y:y + part.shape[0]] = part
                y += part.shape[0]
            assert filled is not None and y == height
            return filled, None
        single = self.config.num_views == 1
        labels: Optional[np.ndarray] = None
        merged: Optional[torch.Tensor] = None
        probs: Optional[np.ndarray] = None
        for ratio in self.config.ratios:
            view = self._view_size(height, width, ratio)
            for flip in ((False, True) if self.config.flip else (False,)):
                y = 0
                for band in resize_rows(self._view_bands(raw, view, flip), view, size):
                    rows = band.shape[2]
                    if labels is None:
                        labels = np.empty((height, width), dtype=_label_dtype(band.shape[1]))
                    if single:
                        labels[y:y + rows] = band.max(dim=1).indices[0].cpu().numpy()
                        if return_probs:
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
            step = max(1, _BAND_ELEMENTS // max(merged.shape[1] * width, 1))
            for y in range(0, height, step):
                labels[y:y + step] = merged[0, :, y:y + step].max(dim=0).indices.cpu().numpy()
            if return_probs:
                probs = merged[0].cpu().numpy().astype(np.float32, copy=False)
        assert labels is not None
        return labels, probs

    @torch.inference_mode()
    def predict_labels(self, image: Any) -> np.ndarray:
        """The label map of one image in the smallest integer dtype that holds the classes (uint8 up to 256
        classes), with the bounded memory of :meth:`predict`."""
        raw, size = self.decode_raw(image, self.decode_target)
        return self._predict_one(raw, size, False)[0]

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def predict(self, images: Any, return_probs: bool = False) -> Any:
        """Label maps at each image's original resolution.

        Args:
            images: one image (path, PIL, numpy array, (C, H, W) tensor) or a batch (a list of them, or a
                (B, C, H, W) tensor).
            return_probs: also return class probabilities.
        Returns:
            For one image an (H, W) int64 array, or ``(labels, probs)`` with probs (K, H, W) float32 when
            ``return_probs``; for a batch, a list of those.
        """
        items, batched = self._inputs(images)
        results = []
        for item in items:
            raw, size = self.decode_raw(item, self.decode_target)
            labels, probs = self._predict_one(raw, size, return_probs)
            labels = labels.astype(np.int64)
            results.append((labels, probs) if return_probs else labels)
        return results if batched else results[0]

    __call__ = predict
