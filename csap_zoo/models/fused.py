"""Inference-time folding: fold normalisations into convolutions and run conv + activation / residual as one kernel.

:func:`optimize_for_inference` returns a copy of a segmentor (or any module) prepared through one protocol: a module
that can be prepared for inference defines ``reparameterize(self) -> nn.Module``, returning its replacement (for
MSCAN: blocks whose BatchNorms and layer scales are folded into the neighbouring 1x1 convolutions and whose GELUs
and residual adds run inside the convolution) or itself, prepared once in place (the decode heads: each stage is
projected before its resize, and CSAP's fusion BatchNorm is folded into that projection). Weights end up in
``channels_last`` layout. Outputs equal the original model's up to float rounding; the copy is for inference only
(its BatchNorm statistics are frozen into weights) and cannot be saved as a checkpoint of the original architecture
(:func:`is_fused`).

:class:`FusedConv2d` runs the fused kernels through oneDNN (``torch.ops.mkldnn._convolution_pointwise``) for
float32 CPU tensors outside autograd, tracing and export, and falls back to the same computation in plain
PyTorch ops everywhere else (CUDA, other dtypes, gradients, ONNX/``torch.export``), so a fused model runs anywhere.
"""
from __future__ import annotations

import copy
import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import capturing_graph

__all__ = ["FusedConv2d", "batchnorm_affine", "fold_batchnorm", "fold_input_affine", "fuse_modules", "is_fused",
           "onednn_fusion_usable", "optimize_for_inference", "reparameterize_modules"]

UNARY_OPS = ("none", "gelu", "relu")
BINARY_OPS = ("add", "mul")


def batchnorm_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``y = scale * x + shift`` (per channel)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution."""
    scale, shift = batchnorm_affine(bn)
    weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    return weight, bias


def fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv(scale * x + shift)`` as one convolution; ``conv`` must be a 1x1 dense conv
    (a per-channel affine input can only be folded exactly where no zero padding meets it)."""
    if tuple(conv.kernel_size) != (1, 1) or conv.groups != 1:
        raise ValueError("only a dense 1x1 convolution can absorb an input-side affine exactly")
    weight = conv.weight.detach()
    bias = weight[:, :, 0, 0] @ shift.detach()
    if conv.bias is not None:
        bias = bias + conv.bias.detach()
    return weight * scale.detach().view(1, -1, 1, 1), bias


@functools.lru_cache(maxsize=None)
def _onednn_fusion_built() -> bool:
    """Whether this torch build has oneDNN and its fused convolution ops (fixed per process; asked once)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def onednn_fusion_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the fused oneDNN kernels can serve this call (else the plain-op fallback runs)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not _onednn_fusion_built():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the fused kernels have no backward
    return not capturing_graph()


class FusedConv2d(nn.Module):
    """A convolution with an optional activation (``unary``) or elementwise ``binary`` op with a second tensor
    applied to its output in the same kernel: ``act(conv(x))`` or ``conv(x) (+|*) other``.

    Built from folded weights (see :func:`fold_batchnorm`); inference only in spirit, but the fallback path is
    ordinary differentiable PyTorch.
    """

    def __init__(
            self,
            weight: torch.Tensor,
            bias: Optional[torch.Tensor],
            stride: Tuple[int, int] = (1, 1),
            padding: Tuple[int, int] = (0, 0),
            groups: int = 1,
            unary: str = "none",
            binary: Optional[str] = None,
    ) -> None:
        super().__init__()
        if unary not in UNARY_OPS:
            raise ValueError(f"unary must be one of {UNARY_OPS}, got {unary!r}")
        if binary is not None and binary not in BINARY_OPS:
            raise ValueError(f"binary must be one of {BINARY_OPS} or None, got {binary!r}")
        if binary is not None and unary != "none":
            raise ValueError("a FusedConv2d applies either an activation or a binary op, not both")
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.groups = groups
        self.unary = unary
        self.binary = binary
        # oneDNN's own (blocked) copy of the weight, made on first use; keyed by the weight's storage and version
        # so that moved or edited weights are re-packed. Not state: dropped when the module is copied or pickled.
        self._packed: Optional[Tuple[Tuple[int, int], torch.Tensor]] = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def _onednn_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's preferred layout (reordered once, not on every call); the plain weight if this
        build cannot reorder it."""
        # inference tensors (created under inference_mode) keep no version counter
        key = (self.weight.data_ptr(), -1 if self.weight.is_inference() else self.weight._version)
        if self._packed is None or self._packed[0] != key:
            try:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    self.weight.detach().to_mkldnn(), list(self.padding), list(self.stride), [1, 1], self.groups,
                    list(x.shape))
            except (AttributeError, NotImplementedError, RuntimeError):
                packed = self.weight
            self._packed = (key, packed)
        return self._packed[1]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, **kwargs) -> "FusedConv2d":
        """From a plain ``nn.Conv2d`` (zero padding, no dilation), folding a following BatchNorm if given."""
        if conv.padding_mode != "zeros" or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d supports zero-padded, undilated convolutions with explicit padding")
        if bn is None:
            weight, bias = conv.weight, conv.bias
        else:
            weight, bias = fold_batchnorm(conv, bn)
        return cls(weight, bias, conv.stride, conv.padding, conv.groups, **kwargs)

    def extra_repr(self) -> str:
        out_chs, in_per_group = self.weight.shape[:2]
        return (f"{in_per_group * self.groups}, {out_chs}, kernel_size={tuple(self.weight.shape[-2:])}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, unary={self.unary}, "
                f"binary={self.binary}")

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (other is None) != (self.binary is None):
            raise ValueError(f"this FusedConv2d {'needs' if self.binary else 'takes no'} second operand")
        if onednn_fusion_usable(x, self.weight):
            args = (list(self.padding), list(self.stride), [1, 1], self.groups)
            weight = self._onednn_weight(x)
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, *args, self.unary, [], "none" if self.unary == "gelu" else "")
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, weight, self.bias, *args, self.binary, None, None, [], None)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return self._plain_epilogue(y, other)

    def add_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out += conv(x)`` in place (one oneDNN kernel where usable); ``out`` must be dense."""
        _check_add_into(self, out)
        if onednn_fusion_usable(x, self.weight):
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                out, x, self._onednn_weight(x), self.bias, list(self.padding), list(self.stride), [1, 1],
                self.groups, "add", None, None, [], None)
        return out.add_(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups))

    def _plain_epilogue(self, y: torch.Tensor, other: Optional[torch.Tensor]) -> torch.Tensor:
        if self.unary == "gelu":
            y = F.gelu(y)
        elif self.unary == "relu":
            y = F.relu(y)
        if other is not None:
            y = y + other if self.binary == "add" else y * other
        return y


def _check_add_into(conv: "FusedConv2d", out: torch.Tensor) -> None:
    if conv.binary != "add":
        raise ValueError("add_into needs a FusedConv2d built with binary='add'")
    if not out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
        raise ValueError("add_into writes into a dense tensor; got a strided view")


def _reparameterizable(module: nn.Module) -> bool:
    """Whether ``module``'s class takes part in the ``reparameterize()`` protocol."""
    method = getattr(type(module), "reparameterize", None)
    return callable(method) and not isinstance(method, nn.Module)


def _reparameterized(module: nn.Module) -> nn.Module:
    """What ``module.reparameterize()`` gives; ``None`` (timm's in-place convention) means ``module`` itself."""
    replacement = module.reparameterize()
    return module if replacement is None else replacement


def reparameterize_modules(model: nn.Module) -> nn.Module:
    """Prepare ``model`` for inference in place through the ``reparameterize()`` protocol and return the result.

    Depth-first: a module whose class defines ``reparameterize()`` is replaced by what it returns (itself when it
    prepared itself in place) and its subtree is left to it; any other module is walked into. ``model`` itself is
    asked first, so the result is a different object only when the root is replaced.
    """
    if _reparameterizable(model):
        return _reparameterized(model)
    for name, child in model.named_children():
        replacement = reparameterize_modules(child)
        if replacement is not child:
            setattr(model, name, replacement)
    return model


fuse_modules = reparameterize_modules  # the name before the protocol was called reparameterize()


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` contains inference-fused modules (folded weights, not a loadable architecture)."""
    return any(isinstance(m, FusedConv2d) for m in model.modules())


def optimize_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` for fast inference: eval mode, no gradients, every module that defines
    ``reparameterize()`` prepared through it (see :func:`reparameterize_modules`), ``channels_last`` weights.

    With ``inplace`` the model itself is prepared (and returned, unless its root module replaces itself). A
    :class:`~csap_zoo.models.segmentor.Segmentor` also switches its input to ``channels_last`` (its outputs stay
    contiguous). Outputs match the original up to float rounding (about 1e-5 relative). Keep the original model
    for training, saving and exporting.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval().requires_grad_(False)
    model = reparameterize_modules(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        set_input_format = getattr(model, "set_input_memory_format", None)  # a Segmentor converts its input too
        if callable(set_input_format):
            set_input_format(torch.channels_last)
    return model
