"""MSCAN: the multi-scale convolutional attention backbone of SegNeXt, as a timm model family.

Four stages of (downsample -> blocks -> LayerNorm over channels). A block is two pre-norm residual branches with
layer scale: spatial attention (1x1 conv, GELU, multi-scale convolutional attention, 1x1 conv, plus its own
shortcut) and a convolutional MLP. The multi-scale attention is a 5x5 depthwise conv followed by three depthwise
strip pairs (1xk then kx1, k = 7, 11, 21); their sum, mixed by a 1x1 conv, gates the input elementwise.

Importing this module registers ``mscan_tiny``, ``mscan_small``, ``mscan_base`` and ``mscan_large`` with timm.
Official ImageNet-1k checkpoints (original release and MMSegmentation copies) load through
:func:`checkpoint_filter_fn`, which maps their key layout onto this one.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from .fused import FusedConv2d, batchnorm_affine, fold_input_affine, onednn_fusion_usable
from .layers import init_conv_linear

__all__ = ["MSCAN", "FusedMscanBlock", "checkpoint_filter_fn"]


class LayerScale2d(nn.Module):
    """Per-channel learnable scale for NCHW tensors."""

    def __init__(self, dim: int, init_value: float = 1e-2) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class StripConv(nn.Module):
    """A depthwise 1xk convolution followed by a depthwise kx1 one: a cheap kxk receptive field."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.row = nn.Conv2d(dim, dim, (1, kernel_size), padding=(0, pad), groups=dim)
        self.col = nn.Conv2d(dim, dim, (kernel_size, 1), padding=(pad, 0), groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.col(self.row(x))


class MultiScaleConvAttention(nn.Module):
    """MSCA: multi-scale depthwise context whose 1x1 mix gates the input elementwise."""

    def __init__(self, dim: int, strip_kernel_sizes: Sequence[int] = (7, 11, 21)) -> None:
        super().__init__()
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.strips = nn.ModuleList([StripConv(dim, k) for k in strip_kernel_sizes])
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.local(x)
        total = context
        for strip in self.strips:
            total = total + strip(context)
        return self.mix(total) * x


class SpatialAttention(nn.Module):
    """1x1 conv, GELU, MSCA, 1x1 conv, with a shortcut around the whole unit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.gating = MultiScaleConvAttention(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.gating(self.act(self.proj_in(x)))) + x


class ConvMlp(nn.Module):
    """1x1 expand, 3x3 depthwise, GELU, 1x1 project."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class MscanBlock(nn.Module):
    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            drop: float = 0.0,
            drop_path: float = 0.0,
            ls_init_value: float = 1e-2,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.ls1 = LayerScale2d(dim, ls_init_value)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale2d(dim, ls_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x

    def reparameterize(self) -> "FusedMscanBlock":
        """This block as an inference-only :class:`FusedMscanBlock` (same outputs up to float rounding)."""
        return FusedMscanBlock(self)


class FusedMscanBlock(nn.Module):
    """An eval-mode :class:`MscanBlock` with BatchNorms and layer scales folded into its 1x1 convs and every
    activation, strip-sum, gate and residual add running inside a convolution (see ``csap_zoo.models.fused``).

    With ``n = a*x + b`` the folded first norm, the attention branch ``x + g*(proj_out(z) + n)`` becomes
    ``proj_out'(z) + x*(1 + g*a)`` with ``g*b`` moved into proj_out's bias; the MLP's norm folds into ``fc1``.
    """

    def __init__(self, block: MscanBlock) -> None:
        super().__init__()
        attn, gating, mlp = block.attn, block.attn.gating, block.mlp
        scale1, shift1 = batchnorm_affine(block.norm1)
        scale2, shift2 = batchnorm_affine(block.norm2)
        gamma1, gamma2 = block.ls1.gamma.detach(), block.ls2.gamma.detach()

        self.proj_in = FusedConv2d(*fold_input_affine(attn.proj_in, scale1, shift1), unary="gelu")
        self.local = FusedConv2d.from_conv(gating.local)
        self.strip_rows = nn.ModuleList([FusedConv2d.from_conv(strip.row) for strip in gating.strips])
        self.strip_cols = nn.ModuleList([FusedConv2d.from_conv(strip.col, binary="add") for strip in gating.strips])
        self.mix = FusedConv2d.from_conv(gating.mix, binary="mul")
        out = attn.proj_out
        self.proj_out = FusedConv2d(out.weight.detach() * gamma1.view(-1, 1, 1, 1),
                                    gamma1 * (out.bias.detach() + shift1), binary="add")
        self.register_buffer("shortcut_scale", (1 + gamma1 * scale1).view(1, -1, 1, 1))
        self.fc1 = FusedConv2d(*fold_input_affine(mlp.fc1, scale2, shift2))
        self.dwconv = FusedConv2d.from_conv(mlp.dwconv, unary="gelu")
        self.fc2 = FusedConv2d(mlp.fc2.weight.detach() * gamma2.view(-1, 1, 1, 1), gamma2 * mlp.fc2.bias.detach(),
                               binary="add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_input = self.proj_in(x)
        context = self.local(gate_input)
        total = context
        for row, col in zip(self.strip_rows, self.strip_cols):
            total = col(row(context), total)
        x = self.proj_out(self.mix(total, gate_input), x * self.shortcut_scale)
        rows = self._band_rows(x)
        if rows >= x.shape[-2]:
            return self.fc2(self.dwconv(self.fc1(x)), x)
        return self._mlp_in_bands(x, rows)

    # The MLP's hidden tensor is mlp_ratio (4-8) times wider than the block: at stride 4 it is tens of MB and the
    # three MLP kernels stream it through memory three times. Horizontal bands that keep it cache-sized give the
    # same numbers (the 3x3 depthwise conv reads one halo row from each neighbouring band).
    BAND_BYTES = 2 ** 21

    def _band_rows(self, x: torch.Tensor) -> int:
        """Rows per band: the hidden tensor split into even bands of about BAND_BYTES (all rows if it is small)."""
        height = x.shape[-2]
        hidden_bytes = self.fc1.weight.shape[0] * x.shape[0] * height * x.shape[-1] * x.element_size()
        bands = hidden_bytes // self.BAND_BYTES
        return height if bands < 2 else max(4, -(-height // bands))

    def _mlp_in_bands(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """``x + mlp(x)`` band by band. Where oneDNN serves a dense (batch-1 channels_last) map, each band's result
        is added into ``x`` in place (``x`` is this block's own intermediate); the next band's fc1 runs first,
        because it reads the last row of the band about to be overwritten as its halo."""
        height = x.shape[-2]
        bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]
        in_place = (x.shape[0] == 1 and x.is_contiguous(memory_format=torch.channels_last)
                    and onednn_fusion_usable(x, self.fc2.weight))
        if not in_place:
            return torch.cat([self.fc2(self._band_hidden(x, top, bottom), x[..., top:bottom, :])
                              for top, bottom in bands], dim=-2)
        hidden = self._band_fc1(x, *bands[0])
        for i, (top, bottom) in enumerate(bands):
            upcoming = self._band_fc1(x, *bands[i + 1]) if i + 1 < len(bands) else None
            self.fc2.add_into(self._band_dwconv(hidden, top, bottom), x[..., top:bottom, :])
            hidden = upcoming
        return x

    def _band_fc1(self, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        """fc1 over the band's rows plus one halo row on each side that lies inside the image."""
        return self.fc1(x[..., max(0, top - 1):min(x.shape[-2], bottom + 1), :])

    def _band_dwconv(self, hidden: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        """The depthwise conv + GELU of a band's fc1 output, without its halo rows. The conv zero-pads the band
        like the image: right at the image's top and bottom edges; the rows it gets wrong (next to an inner halo
        row) are the halo rows themselves, which are dropped."""
        offset = top - max(0, top - 1)
        return self.dwconv(hidden)[..., offset:offset + bottom - top, :]

    def _band_hidden(self, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        return self._band_dwconv(self._band_fc1(x, top, bottom), top, bottom)


class StemConv(nn.Module):
    """Stride-4 stem: two 3x3 stride-2 convs with BatchNorm, GELU between them."""

    def __init__(self, in_chans: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, out_chs // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_chs // 2),
            nn.GELU(),
            nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    def reparameterize(self) -> nn.Sequential:
        """Inference-only copy: BatchNorms folded into the convs, the GELU fused into the first."""
        conv1, bn1, _, conv2, bn2 = self.proj
        return nn.Sequential(FusedConv2d.from_conv(conv1, bn1, unary="gelu"), FusedConv2d.from_conv(conv2, bn2))


class Downsample(nn.Module):
    """3x3 stride-2 conv + BatchNorm between stages."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))

    def reparameterize(self) -> FusedConv2d:
        """Inference-only copy with the BatchNorm folded into the conv."""
        return FusedConv2d.from_conv(self.proj, self.norm)


class MscanStage(nn.Module):
    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            mlp_ratio: float,
            is_stem: bool,
            drop: float = 0.0,
            drop_path_rates: Sequence[float] = (),
            ls_init_value: float = 1e-2,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = StemConv(in_chs, out_chs) if is_stem else Downsample(in_chs, out_chs)
        self.blocks = nn.Sequential(*[
            MscanBlock(out_chs, mlp_ratio, drop=drop, drop_path=drop_path_rates[i], ls_init_value=ls_init_value)
            for i in range(depth)
        ])
        self.norm = LayerNorm2d(out_chs, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


def _stage_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
    """timm's ``indices`` convention for intermediates: None takes every stage, an int n the last n, a sequence the
    listed stages (negative ones counted from the end). Returns the absolute indices and the largest."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"can take the last 1..{num_stages} stages, not {indices}")
        taken = list(range(num_stages - indices, num_stages))
    else:
        taken = [i + num_stages if i < 0 else i for i in indices]
        if not taken or any(not 0 <= i < num_stages for i in taken):
            raise ValueError(f"stage indices must lie in 0..{num_stages - 1} (or -{num_stages}..-1), got {indices}")
    return taken, max(taken)


class MSCAN(nn.Module):
    """MSCAN backbone with an ImageNet classifier head (global average pool -> dropout -> linear)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (32, 64, 160, 256),
            depths: Sequence[int] = (3, 3, 5, 2),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            ls_init_value: float = 1e-2,
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(mlp_ratios)):
            raise ValueError(
                f"embed_dims, depths and mlp_ratios need one entry per stage; got {len(embed_dims)}, "
                f"{len(depths)} and {len(mlp_ratios)}"
            )
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages = []
        self.feature_info: List[Dict[str, Any]] = []
        prev_chs = in_chans
        for i, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, mlp_ratios)):
            stages.append(MscanStage(
                prev_chs, dim, depth, ratio, is_stem=i == 0, drop=proj_drop_rate,
                drop_path_rates=dpr[i], ls_init_value=ls_init_value,
            ))
            prev_chs = dim
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_conv_linear)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.downsample",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        device = self.stages[-1].norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_conv_linear(self.head)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Run the stages and collect the (already normalised) outputs of those in ``indices``.

        ``indices``: last n stages if an int, all if None, the listed ones otherwise. ``norm`` is accepted for
        API compatibility: every MSCAN stage ends in its own LayerNorm, so intermediates are always normalised.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"MSCAN returns NCHW intermediates only, got output_fmt={output_fmt!r}")
        take_indices, max_index = _stage_indices(len(self.stages), indices)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        intermediates: List[torch.Tensor] = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) that the requested intermediates do not need."""
        take_indices, max_index = _stage_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            self.stages = self.stages[:max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Original release / MMSegmentation names -> ours, applied to the key after its stage prefix is rewritten.
_BLOCK_RENAMES = (
    ("layer_scale_1", "ls1.gamma"),
    ("layer_scale_2", "ls2.gamma"),
    ("attn.proj_1.", "attn.proj_in."),
    ("attn.proj_2.", "attn.proj_out."),
    ("attn.spatial_gating_unit.conv0.", "attn.gating.local."),
    ("attn.spatial_gating_unit.conv0_1.", "attn.gating.strips.0.row."),
    ("attn.spatial_gating_unit.conv0_2.", "attn.gating.strips.0.col."),
    ("attn.spatial_gating_unit.conv1_1.", "attn.gating.strips.1.row."),
    ("attn.spatial_gating_unit.conv1_2.", "attn.gating.strips.1.col."),
    ("attn.spatial_gating_unit.conv2_1.", "attn.gating.strips.2.row."),
    ("attn.spatial_gating_unit.conv2_2.", "attn.gating.strips.2.col."),
    ("attn.spatial_gating_unit.conv3.", "attn.gating.mix."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv."),  # original release; MMSegmentation 1.x already says mlp.dwconv.
)


def _unwrap_state_dict(state_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            return _unwrap_state_dict(state_dict[wrapper])
    return state_dict


def _rename_original_key(key: str) -> Optional[str]:
    """Map one key of the original MSCAN layout to ours; None for keys that belong to no MSCAN module."""
    match = re.match(r"patch_embed(\d)\.(.*)", key)
    if match:
        return f"stages.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
    match = re.match(r"norm(\d)\.(.*)", key)
    if match:
        return f"stages.{int(match.group(1)) - 1}.norm.{match.group(2)}"
    match = re.match(r"block(\d)\.(\d+)\.(.*)", key)
    if match:
        rest = match.group(3)
        for old, new in _BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f"stages.{int(match.group(1)) - 1}.blocks.{match.group(2)}.{rest}"
    if key.startswith("head."):
        return key
    return None


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: MSCAN) -> Dict[str, torch.Tensor]:
    """Convert an MSCAN checkpoint in the original or MMSegmentation layout to this model's layout.

    Accepts checkpoints wrapped in ``state_dict``/``model``, keys with a ``backbone.`` prefix (segmentation
    checkpoints; the decode head's keys are dropped), and ImageNet checkpoints with or without ``head.*``. When the
    checkpoint has no classifier the model's freshly initialised one is kept, so a strict load still succeeds.
    Checkpoints already in this layout pass through unchanged.
    """
    state_dict = _unwrap_state_dict(state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    if any(k.startswith("stages.") for k in state_dict):
        out = dict(state_dict)
    else:
        out = {}
        for key, value in state_dict.items():
            new_key = _rename_original_key(key)
            if new_key is not None:
                out[new_key] = value
    own = model.state_dict()
    has_head = any(k.startswith("head.") for k in own)
    if not has_head:
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    elif not any(k.startswith("head.") for k in out):
        out.update({k: v for k, v in own.items() if k.startswith("head.")})
    _check_backbone_keys(out, own)
    return out


def _check_backbone_keys(converted: Dict[str, Any], own: Dict[str, Any]) -> None:
    """Raise unless the converted checkpoint covers exactly the model's backbone (non-head) keys.

    timm loads pretrained weights with ``strict=False`` whenever ``num_classes`` differs from the checkpoint's, and
    ``features_only=True`` always counts as such; without this check a checkpoint in an unknown layout (or of another
    variant) would leave the backbone partly or wholly at random init with no error. ``num_batches_tracked`` may be
    absent: BatchNorm fills it in on load.
    """
    ours = {k for k in own if not k.startswith("head.")}
    theirs = {k for k in converted if not k.startswith("head.")}
    missing = sorted(k for k in ours - theirs if not k.endswith("num_batches_tracked"))
    unexpected = sorted(theirs - ours)
    if missing or unexpected:
        raise RuntimeError(
            f"MSCAN checkpoint does not match the model: {len(missing)} missing backbone key(s) "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. Expected the original SegNeXt / "
            f"MMSegmentation layout or this package's own, of the same variant."
        )


def _create_mscan(variant: str, pretrained: bool = False, **kwargs: Any) -> MSCAN:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        MSCAN,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.proj.0",
        "classifier": "head",
        "fixed_input_size": False,
        "license": "apache-2.0",
        **kwargs,
    }


_MMSEG_PRETRAIN = "https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segnext/"

default_cfgs = generate_default_cfgs({
    "mscan_tiny.in1k": _cfg(url=_MMSEG_PRETRAIN + "mscan_t_20230227-119e8c9f.pth"),
    "mscan_small.in1k": _cfg(url=_MMSEG_PRETRAIN + "mscan_s_20230227-f33ccdf2.pth"),
    "mscan_base.in1k": _cfg(url=_MMSEG_PRETRAIN + "mscan_b_20230227-3ab7d230.pth"),
    "mscan_large.in1k": _cfg(url=_MMSEG_PRETRAIN + "mscan_l_20230227-cef260d4.pth"),
})

# Architecture of each variant (REFERENCE section 2). drop_path_rate is the segmentation training default.
MSCAN_VARIANTS: Dict[str, Dict[str, Any]] = {
    "mscan_tiny": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4),
                       drop_path_rate=0.1),
    "mscan_small": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4),
                        drop_path_rate=0.1),
    "mscan_base": dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4),
                       drop_path_rate=0.1),
    "mscan_large": dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4),
                        drop_path_rate=0.3),
}


@register_model
def mscan_tiny(pretrained: bool = False, **kwargs: Any) -> MSCAN:
    """MSCAN-T: 32/64/160/256 channels, 3/3/5/2 blocks (3.9M params with an ImageNet head)."""
    return _create_mscan("mscan_tiny", pretrained, **{**MSCAN_VARIANTS["mscan_tiny"], **kwargs})


@register_model
def mscan_small(pretrained: bool = False, **kwargs: Any) -> MSCAN:
    """MSCAN-S: 64/128/320/512 channels, 2/2/4/2 blocks."""
    return _create_mscan("mscan_small", pretrained, **{**MSCAN_VARIANTS["mscan_small"], **kwargs})


@register_model
def mscan_base(pretrained: bool = False, **kwargs: Any) -> MSCAN:
    """MSCAN-B: 64/128/320/512 channels, 3/3/12/3 blocks."""
    return _create_mscan("mscan_base", pretrained, **{**MSCAN_VARIANTS["mscan_base"], **kwargs})


@register_model
def mscan_large(pretrained: bool = False, **kwargs: Any) -> MSCAN:
    """MSCAN-L: 64/128/320/512 channels, 3/5/27/3 blocks, drop path 0.3."""
    return _create_mscan("mscan_large", pretrained, **{**MSCAN_VARIANTS["mscan_large"], **kwargs})
