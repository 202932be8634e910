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
  what ``csap-zoo predict`` uses), or the native size for a model without one. Predictions are resized (bilinear on
  the logits) back to the original size before the argmax.
- ``mode="slide"`` and multi-scale + flip: see :mod:`csap_zoo.inference.windows`.
- Images smaller than the model's minimum size (32 px for the built-in models) are stretched up to that size along
  the short side(s) before the model and the logits are resized back, so 1x1 images work.
- ``backend="auto"`` (default) runs OpenVINO on the CPU and PyTorch elsewhere (:mod:`.backends`);
  ``precision="fp32" | "bf16" | "fp16" | "int8"`` says what the network computes in (:mod:`.precision`); logits
  are merged in float32. With PyTorch at fp32 the normalised input is cast to the model's parameter dtype (e.g. a
  ``model.half()`` on CUDA).
- Tensors with NaN or Inf values are refused (ValueError naming how many and the first index).

The modules: :mod:`.config` (options), :mod:`.inputs` (decode, reduce, normalise), :mod:`.windows` (whole / slide /
views), :mod:`.bands` (banded label maps from low-resolution logits), :mod:`.backends` (torch or OpenVINO, and
the pick of ``"auto"``), :mod:`.openvino_ir` (conversion, int8 quantization, the on-disk cache), :mod:`.precision`
(precisions and the CPU's instructions) and :mod:`.segmenter` (the public API over them).
"""
from .backends import OpenVINONetwork, check_backend, resolve_backend
from .bands import ResizeStep, label_map_bands, resize_rows
from .config import AUTO_RESIZE, InferenceConfig
from .precision import CpuInfo, cpu_info
from .segmenter import Segmenter

__all__ = ["AUTO_RESIZE", "CpuInfo", "InferenceConfig", "OpenVINONetwork", "ResizeStep", "Segmenter", "check_backend",
           "cpu_info", "label_map_bands", "resize_rows", "resolve_backend"]
