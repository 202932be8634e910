"""Segmentor: any timm ``features_only`` backbone plus a decode head, for inputs of any size.

The segmentor checks its input, applies its padding policy, runs backbone and head, and returns logits at the
input's own height and width. The padding policy (``SegmentorConfig.pad_mode``) is part of the architecture, saved
with every checkpoint, because it changes the outputs of a trained model:

- ``"zero-to-stride"``: zero-pad right and bottom to a multiple of the backbone's largest stride, upsample the
  logits to the padded size and crop. CSAP uses it: its pooled attention cells and the propagation of the deepest
  stage's maps to the shallower stages assume feature grids that are exact 2x / 4x multiples of each other, which
  only inputs aligned to the stride give.
- ``"none"``: run the input as it is (strided convolutions round sizes up) and resize the logits straight to the
  input size. This is what the original SegNeXt code does (MMSegmentation 1.x pads instead); the NMF and the
  GroupNorms in SegNeXt's head take statistics over the whole map, so padding changes its outputs everywhere.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import (
    HEAD_TYPES, MAX_CLASSES, MAX_IMAGE_SIZE, PAD_MODES, DataConfig, HeadConfig, SegmentorConfig, check_backbone_args,
)
from .layers import capturing_graph
from .pretrained import PretrainedMixin

__all__ = ["DataConfig", "HEAD_TYPES", "HeadConfig", "MAX_CLASSES", "MAX_IMAGE_SIZE", "PAD_MODES", "Segmentor",
           "SegmentorConfig", "check_backbone_args", "check_finite", "select_feature_indices"]


def check_finite(x: torch.Tensor, layout: str) -> None:
    """Raise ValueError naming how many values of ``x`` are NaN or infinite and the index of the first one (in the
    given ``layout``, e.g. "(batch, channel, y, x)")."""
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        count = int(bad.sum())
        flat = int(bad.reshape(-1).to(torch.uint8).argmax())  # argmax returns the first maximum
        first = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape))
        raise ValueError(f"input has {count} non-finite value(s) (NaN or Inf); the first is at index {first} "
                         f"{layout} of shape {tuple(x.shape)}. Replace them (e.g. torch.nan_to_num) before "
                         f"running the model")


def select_feature_indices(reductions: Sequence[int], strides: Sequence[int], backbone_name: str) -> List[int]:
    """Indices of the backbone features with the wanted output strides (the last one when a stride repeats)."""
    indices = []
    for stride in strides:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(
                f"backbone {backbone_name!r} has no feature map at stride {stride} (its feature strides are "
                f"{list(reductions)}); the head needs strides {list(strides)}. Pick a hierarchical backbone "
                f"(e.g. a ConvNeXt, ResNet, EfficientNet or MSCAN)."
            )
        indices.append(matches[-1])
    return indices


class Segmentor(PretrainedMixin, nn.Module):
    """Backbone + head. ``forward`` returns logits (B, num_classes, H, W) for any (B, in_chans, H, W) float input.

    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from
    :class:`~csap_zoo.models.pretrained.PretrainedMixin` (the folder format).

    Args:
        backbone: a module returning a list of NCHW features (timm ``features_only`` model).
        head: a module taking the selected features (shallow to deep) and returning logits at the shallowest one.
        feature_indices: which backbone outputs the head takes.
        in_chans: expected input channels.
        stride: padding multiple (the backbone's largest reduction).
        min_size: smallest accepted height/width; below it the deepest stage would see mostly padding.
        pad_mode: ``"zero-to-stride"`` or ``"none"`` (module docstring).
        logit_stride: reduction of the head's logits (that of the shallowest feature it takes).
        config: the config the segmentor was built from, kept for saving and reloading.
        data_config: normalisation, evaluation size and class names that belong with the weights.
    """

    def __init__(
            self,
            backbone: nn.Module,
            head: nn.Module,
            feature_indices: Sequence[int],
            in_chans: int,
            stride: int,
            min_size: Optional[int] = None,
            config: Optional[SegmentorConfig] = None,
            data_config: Optional[DataConfig] = None,
            pad_mode: str = "zero-to-stride",
            logit_stride: int = 8,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.logit_stride = int(logit_stride)
        self.backbone = backbone
        self.decode_head = head
        self.feature_indices = list(feature_indices)
        self.in_chans = in_chans
        self.stride = stride
        self.min_size = stride if min_size is None else min_size
        self.config = config
        self.data_config = data_config or DataConfig()
        self.metrics: Dict[str, Any] = {}  # evaluation results that travel with the weights (model card)
        # Layout the input is switched to before the backbone (None: as given; optimize_for_inference sets
        # channels_last).
        self.memory_format: Optional[torch.memory_format] = None

    @classmethod
    def from_config(
            cls,
            config: SegmentorConfig,
            pretrained_backbone: Union[bool, str, Dict[str, Any]] = False,
            data_config: Optional[DataConfig] = None,
    ) -> "Segmentor":
        """Build backbone (through timm) and head from a config.

        ``pretrained_backbone``: False for random weights, a local checkpoint file for the backbone (converted by
        the backbone family's checkpoint filter), or True for timm's own default weights.
        """
        timm_kwargs: Dict[str, Any] = dict(pretrained=bool(pretrained_backbone))
        if isinstance(pretrained_backbone, str):
            timm_kwargs["pretrained_cfg_overlay"] = dict(file=pretrained_backbone)
        elif isinstance(pretrained_backbone, dict):  # tensors the caller has already read (and verified)
            timm_kwargs["pretrained_cfg_overlay"] = dict(state_dict=pretrained_backbone)
        try:
            backbone = timm.create_model(
                config.backbone, features_only=True, in_chans=config.in_chans, **timm_kwargs, **config.backbone_args,
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(
                    f"unknown timm backbone {config.backbone!r}; see timm.list_models() for valid names"
                ) from err
            raise
        reductions = backbone.feature_info.reduction()
        indices = select_feature_indices(reductions, config.feature_strides, config.backbone)
        channels = [backbone.feature_info.channels()[i] for i in indices]
        head = config.head.build(channels, config.num_classes)
        return cls(backbone, head, indices, config.in_chans, stride=max(reductions), config=config,
                   data_config=data_config, pad_mode=config.pad_mode, logit_stride=reductions[indices[0]])

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Give the head a fresh classifier for ``num_classes`` classes (backbone and decoder weights are kept)."""
        self.decode_head.reset_classifier(num_classes)
        if self.config is not None:
            self.config.num_classes = num_classes
        if self.data_config.class_names is not None and len(self.data_config.class_names) != num_classes:
            self.data_config.class_names = None
            self.data_config.palette = None

    def check_input(self, x: Any) -> None:
        """Raise ValueError, saying what was expected, for anything that is not a usable image batch."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor of shape (batch, {self.in_chans}, height, width), "
                             f"got {type(x).__name__}")
        if x.dim() != 4:
            hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise ValueError(f"expected a 4-D tensor (batch, {self.in_chans}, height, width), "
                             f"got shape {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point tensor (normalised image), got dtype {x.dtype}; "
                             f"convert with x.float() and normalise with the model's mean/std")
        batch, chans, height, width = x.shape
        if batch == 0:
            raise ValueError("got an empty batch (batch size 0); pass at least one image")
        if chans != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {chans} (shape {tuple(x.shape)}); "
                             f"create the model with in_chans={chans} to accept such images")
        if height < self.min_size or width < self.min_size:
            raise ValueError(f"image of {height}x{width} is smaller than the minimum size "
                             f"{self.min_size}x{self.min_size}; upscale it first")
        if not capturing_graph() and x.device.type != "meta":
            check_finite(x, "(batch, channel, y, x)")

    def pad_to_stride(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded right and bottom to a multiple of the stride (``x`` itself when it already is one)."""
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (self.stride - height % self.stride) % self.stride
        pad_w = (self.stride - width % self.stride) % self.stride
        if capturing_graph() or pad_h or pad_w:  # no branch on the size in a captured graph
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone sees for input ``x``: the padding policy applied, in the segmentor's memory format.

        The padding is computed without branching on the size, so traced and exported graphs stay dynamic.
        """
        if self.pad_mode == "zero-to-stride":
            x = self.pad_to_stride(x)
        return self._to_memory_format(x)

    def logit_geometry(self, height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """For an input of ``height`` x ``width``: the size the head's logits are bilinearly resized to, and the
        top-left part of that which covers the input (the two are equal without padding)."""
        if self.pad_mode == "none":
            return (height, width), (height, width)
        stride = self.stride  # integer arithmetic only: symbolic sizes (tracing, export) stay symbolic
        return ((height + stride - 1) // stride * stride, (width + stride - 1) // stride * stride), (height, width)

    def set_input_memory_format(self, memory_format: Optional[torch.memory_format]) -> None:
        """Convert inputs to ``memory_format`` before the backbone (None: run them as given); outputs stay
        contiguous. ``optimize_for_inference`` sets ``torch.channels_last``."""
        self.memory_format = memory_format

    def _to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The features the head consumes (shallow to deep), for an input already prepared by ``prepare_input``."""
        features = self.backbone(x)
        return [features[i] for i in self.feature_indices]

    def logits_at_input(self, logits: torch.Tensor, height: Any, width: Any, upsample: bool = True) -> torch.Tensor:
        """The head's logits for an input of ``height`` x ``width`` mapped back onto it: resized to the input's
        resolution (``upsample``), or the raw logit cells that overlap the real image.

        Integer arithmetic only, so that symbolic sizes (tracing, export) stay symbolic.
        """
        if not upsample:
            if self.pad_mode == "none":  # every cell overlaps the image
                return logits
            step = self.logit_stride
            return logits.narrow(2, 0, (height + step - 1) // step).narrow(3, 0, (width + step - 1) // step)
        resized, (keep_h, keep_w) = self.logit_geometry(height, width)
        logits = F.interpolate(logits, size=resized, mode="bilinear", align_corners=False)
        return logits.narrow(2, 0, keep_h).narrow(3, 0, keep_w)

    def forward_logits(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        """The one padded forward, without input checks: padding policy, backbone, head, logits mapped back to
        the input. ``forward`` checks and calls it; exports trace it."""
        height, width = x.shape[-2], x.shape[-1]
        logits = self.decode_head(self.forward_features(self.prepare_input(x)))
        return self.logits_at_input(logits, height, width, upsample)

    def _input_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the parameters' dtype where that loses nothing that matters (float64 -> float32, or a
        lower-precision float up to the parameters' precision); under autocast the input is left alone."""
        param = next(iter(self.parameters()), None)
        if param is None or x.dtype == param.dtype or torch.is_autocast_enabled(x.device.type):
            return x
        wanted = param.dtype
        if x.dtype == torch.float64 or torch.finfo(x.dtype).bits < torch.finfo(wanted).bits:
            return x.to(wanted)
        raise ValueError(f"the model's parameters are {wanted}, got a {x.dtype} input; pass x.to({wanted}) or run "
                         f"the model under torch.autocast")

    def forward(self, x: torch.Tensor, upsample: bool = True, crop: bool = True) -> torch.Tensor:
        """Logits at the input's resolution, or the head's raw (stride-8) logits with ``upsample=False``.

        ``crop=False`` (with ``upsample=False``) returns the raw logits of the whole prepared input: bilinearly
        resizing them to ``logit_geometry(h, w)[0]`` and keeping the top-left ``logit_geometry(h, w)[1]`` equals
        ``forward(x)``.
        """
        self.check_input(x)
        x = self._input_dtype(x)
        if not crop and not upsample:
            return self.decode_head(self.forward_features(self.prepare_input(x)))
        return self.forward_logits(x, upsample).contiguous()

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Logits at input resolution plus the head's attention maps (shallow to deep), for analysis.

        Maps are (B, heads, H_i*W_i, M) on the prepared (padded) feature grids. Only heads with attention support
        this.
        """
        if not hasattr(self.decode_head, "forward_with_attention"):
            raise ValueError(f"{type(self.decode_head).__name__} has no attention maps to return")
        self.check_input(x)
        x = self._input_dtype(x)
        logits, maps = self.decode_head.forward_with_attention(self.forward_features(self.prepare_input(x)))
        return self.logits_at_input(logits, x.shape[-2], x.shape[-1]).contiguous(), maps
