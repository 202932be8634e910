"""How a ``Segmenter`` runs its model: ``InferenceConfig`` and the checks of the Segmenter's other options."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ..data.metadata import get_dataset_info

__all__ = ["AUTO_RESIZE", "DEFAULT_INPUT_RANGE", "DEFAULT_WHOLE_MAX_PIXELS", "InferenceConfig", "check_input_range",
           "check_optimize", "resolve_config"]

Pair = Tuple[int, int]

DEFAULT_WHOLE_MAX_PIXELS = 4096 * 4096
AUTO_RESIZE = "auto"  # InferenceConfig.resize: the model's data_config.test_size, else native size
DEFAULT_INPUT_RANGE = (0.0, 255.0)
# The Segmenter's keyword options that are not InferenceConfig fields (named in the unknown-option error)
SEGMENTER_OPTIONS = ("mean", "std", "device", "precision", "dataset_info", "optimize", "input_range", "backend",
                     "backend_cache_dir", "calibration")


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


def resolve_config(config: Optional[InferenceConfig], overrides: Dict[str, Any], data_config: Any) -> InferenceConfig:
    """The configuration a Segmenter runs: ``config`` (default: ``InferenceConfig()``) with the keyword
    ``overrides`` of its fields, and ``resize="auto"`` replaced by the checkpoint's own evaluation size
    (``data_config.test_size``, the one the CLI uses) or None (native size) when there is none."""
    config = config or InferenceConfig()
    if overrides:
        valid = {f.name for f in dataclasses.fields(InferenceConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown Segmenter option(s) {unknown}; valid ones are {sorted(valid)} "
                            f"plus {', '.join(SEGMENTER_OPTIONS)}")
        config = dataclasses.replace(config, **overrides)
    if config.resize == AUTO_RESIZE:
        test_size = getattr(data_config, "test_size", None)
        config = dataclasses.replace(config, resize=tuple(test_size) if test_size else None)
    return config


def check_input_range(value: Sequence[float]) -> Tuple[float, float]:
    """``input_range`` as a (low, high) pair of finite floats with high > low."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be a (low, high) pair of numbers, e.g. (0, 1), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"input_range must be a finite (low, high) pair with high > low, got {value!r}")
    return low, high


def check_optimize(optimize: Union[bool, str]) -> Union[bool, str]:
    """The ``optimize`` option: True, False or ``"auto"``."""
    if optimize not in (True, False, "auto"):
        raise ValueError(f"optimize must be True, False or 'auto', got {optimize!r}")
    return optimize
