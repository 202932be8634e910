"""``Segmenter``: images in, label maps out, at each image's original size.

It composes the other modules of :mod:`csap_zoo.inference`: the options (:mod:`.config`), decoding and
normalisation (:mod:`.inputs`), the whole / slide / multi-scale + flip passes (:mod:`.windows`), the banded
label maps (:mod:`.bands`) and where a Segmentor's network runs (:mod:`.backends`).

Memory (``predict``): an image larger than twice the largest view the model runs on is first reduced by an integer
factor while decoding (JPEG: DCT scaling; other files, PIL images, arrays and tensors: box averaging a band of rows
at a time), so the float image handed to the model is never built at full size when the model runs smaller. The
view's logits are resized back and arg-maxed a band of rows at a time; a single whole view of a Segmentor takes its
label map straight from the head's logits (:func:`.bands.label_map_bands`). So a (K, H, W) float logit map of the
full image never exists, except with ``return_probs``. Files above ``max_pixels`` are refused before decoding, and
``mode="whole"`` refuses model inputs above ``whole_max_pixels`` with a ValueError that suggests slide mode or a
resize, instead of running out of memory inside the model.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.metadata import DatasetInfo, custom_dataset_info, get_dataset_info
from ..errors import UsageError
from ..models.fused import optimize_for_inference
from ..models.segmentor import Segmentor
from . import bands as _bands  # read as _bands.BAND_ELEMENTS at call time: a test may lower it
from .backends import OpenVINONetwork, resolve_backend
from .bands import ResizeStep, label_map_bands, resize_rows
from .config import DEFAULT_INPUT_RANGE, InferenceConfig, check_input_range, check_optimize, resolve_config
from .inputs import ImageInputs, split_batch
from .precision import check_precision, torch_dtype
from .windows import WindowPasses, band_labels, merge_views

__all__ = ["Segmenter"]

Pair = Tuple[int, int]


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
        precision: ``"fp32"`` (default), ``"bf16"`` (CPU with bf16 instructions, or CUDA), ``"fp16"`` (CUDA) or
            ``"int8"`` (OpenVINO, quantized with NNCF on ``calibration``): see
            :mod:`csap_zoo.inference.precision` for what each runs as and its measured accuracy.
        dataset_info: class names and palette for visualisation; default from the model's ``data_config``
            (class names / palette, else its dataset tag), else generated names and colours.
        optimize: run a fused, channels_last copy of the model (:func:`csap_zoo.models.optimize_for_inference`; same
            outputs up to float rounding, the model passed in is left untouched). ``"auto"`` (default) does so
            for a ``Segmentor`` on the CPU; True for any ``Segmentor``; False never.
        input_range: the (low, high) values of black and white in float tensors and float numpy arrays,
            mapped linearly onto 0-255 before normalisation: (0, 255) by default, ``(0, 1)`` for
            ``torchvision.transforms.ToTensor``-style inputs. Integer inputs (uint8, uint16, ...) keep their own
            scale.
        backend: where a Segmentor's network runs: ``"auto"`` (default: OpenVINO on the CPU where it imports,
            else PyTorch; ``CSAP_ZOO_BACKEND`` overrides the pick), ``"torch"`` (any device and module) or
            ``"openvino"`` (CPU; converted once for every input size and cached on disk, see
            :mod:`csap_zoo.inference.backends`). Pre-processing is the same for both; a whole-image label map is
            resized and arg-maxed inside OpenVINO where the full-size scores fit its limit (the same labels up to
            float rounding ties), by the torch code otherwise. ``seg.backend`` says which one runs.
        backend_cache_dir: the cache root for the OpenVINO backend's converted models (default ``CSAP_ZOO_CACHE``
            or ``~/.cache/csap_zoo``; False: memory only).
        calibration: for ``precision="int8"``: images of your data (anything ``predict`` takes; 16-32 are
            enough), preprocessed as predictions are; the quantized graph is cached per calibration set.
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[InferenceConfig] = None,
            *,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None,
            device: Optional[Union[str, torch.device]] = None,
            precision: str = "fp32",
            dataset_info: Optional[DatasetInfo] = None,
            optimize: Union[bool, str] = "auto",
            input_range: Sequence[float] = DEFAULT_INPUT_RANGE,
            backend: str = "auto",
            backend_cache_dir: Any = None,
            calibration: Optional[Sequence[Any]] = None,
            **config_overrides: Any,
    ) -> None:
        data_config = getattr(model, "data_config", None)
        config = resolve_config(config, config_overrides, data_config)
        input_range = check_input_range(input_range)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        model = model.to(self.device).eval()
        self.backend = resolve_backend(backend, model, self.device, precision)
        self.precision = check_precision(precision, self.device, self.backend)
        if calibration is not None and precision != "int8":
            raise UsageError("calibration images are used by precision='int8' only; leave calibration unset")
        if self.backend == "openvino":
            if not isinstance(model, Segmentor):
                raise UsageError(f"backend='openvino' runs a csap_zoo Segmentor's network; got a "
                                 f"{type(model).__name__} (use backend='torch')")
            if self.device.type != "cpu":
                raise UsageError("backend='openvino' runs on the CPU: leave device unset (or 'cpu'), or use "
                                 "backend='torch'")
            optimize = False  # OpenVINO fuses on its own; the PyTorch model stays as given
        check_optimize(optimize)
        in_chans, min_size = int(getattr(model, "in_chans", 3)), int(getattr(model, "min_size", 1))
        self.num_classes = getattr(model, "num_classes", None)
        source = model
        if isinstance(model, Segmentor) and (optimize is True or (optimize == "auto" and self.device.type == "cpu")):
            model = optimize_for_inference(model)
        autocast_dtype = None
        if self.backend == "torch" and self.precision in ("bf16", "fp16"):
            if self.device.type == "cpu":  # cast once: autocast would cast the weights again on every call
                model = (model if model is not source else copy.deepcopy(model)).to(torch_dtype(self.precision))
            else:
                autocast_dtype = torch_dtype(self.precision)
        self.inputs = ImageInputs(self.device, in_chans,
                                  mean=mean if mean is not None else getattr(data_config, "mean", None) or None,
                                  std=std if std is not None else getattr(data_config, "std", None) or None,
                                  input_range=input_range)
        self.passes = WindowPasses(model, config, self.inputs.normalize, self.device, autocast_dtype=autocast_dtype,
                                   min_size=min_size)
        if self.backend == "openvino":
            inputs = self.calibration_inputs(calibration) if self.precision == "int8" else None
            self.passes.network = OpenVINONetwork(model, cache_dir=backend_cache_dir, precision=self.precision,
                                                  calibration=inputs)
        if config.mode == "slide" and min(config.crop_size) < min_size:
            raise ValueError(f"crop_size {config.crop_size} is below the model's minimum input size {min_size}")
        self._dataset_info = dataset_info

    @property
    def config(self) -> InferenceConfig:
        """The configuration it runs (``resize="auto"`` resolved)."""
        return self.passes.config

    @property
    def model(self) -> nn.Module:
        """The module it runs (a fused copy of the given Segmentor when ``optimize`` applied)."""
        return self.passes.model

    @property
    def network(self) -> Optional[OpenVINONetwork]:
        """The OpenVINO network with ``backend="openvino"``, else None."""
        return self.passes.network

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

    # ------------------------------------------------------------------ building blocks
    def decode_target(self, height: int, width: int) -> Pair:
        """The largest view the model runs on for an image of this size (decoding may reduce down to it)."""
        sizes = [self.passes.view_size(height, width, r) for r in self.config.ratios]
        return max(s[0] for s in sizes), max(s[1] for s in sizes)

    def decode_raw(self, image: Any, target: Optional[Any]) -> Tuple[torch.Tensor, Pair]:
        """A raw 0-255 (1, C, h, w) tensor (uint8 where the input allows) reduced towards ``target(H, W)``, and the
        image's full size (H, W)."""
        return self.inputs.decode(image, target, max_pixels=self.config.max_pixels)

    @torch.inference_mode()
    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for a normalised float batch, by the configured mode (whole or slide).

        Inputs below the model's minimum size are stretched up to it and the logits resized back.
        """
        return self.passes.inference(x)

    @torch.inference_mode()
    def scores(self, raw: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Merged class scores (1, K, H, W) at the input's size for one raw 0-255 image tensor (1, C, H, W).

        Returns (scores, are_probabilities): logits for a single view, averaged softmax probabilities for several.
        """
        return self.passes.scores(raw)

    def label_bands(self, raw: torch.Tensor, size: Pair) -> Iterator[np.ndarray]:
        """The label map (``size`` = (H, W)) of one raw image tensor as consecutive bands of rows, in the smallest
        integer dtype that holds the classes. Several views are merged band by band (their generators run side by
        side; the same sums in the same order as one full-size accumulator), so no full-size map is built."""
        passes = self.passes
        height, width = size
        view = passes.view_size(height, width, self.config.ratios[0])
        if (self.config.num_views == 1 and self.config.mode == "whole" and isinstance(self.model, Segmentor)
                and min(view) >= passes.min_size):
            # one view: the label map straight from the head's logits, interpolating only classes that can win
            passes.check_whole_size(*view)
            x = self.inputs.normalize(passes.view_input(raw, view))
            if self.network is not None:  # resize + arg-max inside OpenVINO where the scores fit
                steps = [passes.logit_step(self.network.native_shape(tuple(x.shape))[-2:], x), ResizeStep(view, size)]
                if self.network.fits_label_graph(tuple(x.shape), steps):
                    yield self.network.label_map(x, steps)[0]
                    return
            low, step = passes.head_logits(x)
            x = None
            yield from label_map_bands(low, [step, ResizeStep(view, size)], band_elements=_bands.BAND_ELEMENTS)
            return
        views = [resize_rows(passes.view_bands(raw, view, flip), view, size) for view, flip in passes.views(*size)]
        if len(views) == 1:
            for band in views[0]:
                part = band_labels(band)
                band = None
                yield part
            return
        yield from merge_views(views, width)

    def _predict_one(self, raw: torch.Tensor, size: Pair, return_probs: bool) -> Tuple[np.ndarray,
                                                                                    Optional[np.ndarray]]:
        """Labels (H, W) in the smallest integer dtype that holds the classes, and probabilities (K, H, W) when
        asked, for one raw image tensor whose full size is ``size``; see the module docstring for the memory."""
        if return_probs:
            return self.passes.labels_and_probs(raw, size)
        height, width = size
        filled: Optional[np.ndarray] = None
        y = 0
        for part in self.label_bands(raw, size):
            if filled is None:
                filled = np.empty((height, width), dtype=part.dtype)
            filled[y:y + part.shape[0]] = part
            y += part.shape[0]
        assert filled is not None and y == height
        return filled, None

    @torch.inference_mode()
    def calibration_inputs(self, images: Optional[Sequence[Any]]) -> List[np.ndarray]:
        """What int8 calibration runs the network on: each image (anything ``predict`` takes) decoded and resized
        to the view the model sees, normalised; in slide mode its first window."""
        if not images:
            raise UsageError("precision='int8' needs calibration images of your data (calibration=[paths, arrays, "
                             "...] or --calibration FILES); 16-32 are enough")
        found = []
        for image in (images if isinstance(images, (list, tuple)) else list(images)):
            raw, size = self.decode_raw(image, self.decode_target)
            view = self.passes.view_size(*size, self.config.ratios[0])
            x = self.inputs.normalize(self.passes.view_input(raw, view))
            if self.config.mode == "slide":
                y1, y2, x1, x2 = self.passes.slide_boxes(*view)[0]
                x = x[..., y1:y2, x1:x2]
            found.append(x.float().cpu().numpy())
        return found

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def predict_labels(self, image: Any) -> np.ndarray:
        """The label map of one image in the smallest integer dtype that holds the classes (uint8 up to 256
        classes), with the bounded memory of :meth:`predict`."""
        raw, size = self.decode_raw(image, self.decode_target)
        return self._predict_one(raw, size, False)[0]

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
        items, batched = split_batch(images)
        results = []
        for item in items:
            raw, size = self.decode_raw(item, self.decode_target)
            labels, probs = self._predict_one(raw, size, return_probs)
            labels = labels.astype(np.int64)
            results.append((labels, probs) if return_probs else labels)
        return results if batched else results[0]

    __call__ = predict
