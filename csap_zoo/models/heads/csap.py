"""CSAP decoder: Cross-Stage Attention Propagation.

Each backbone stage the decoder uses (stride 8, 16 and 32 for MSCAN) gets one pre-norm transformer-style block:
attention over a small set of pooled cells, then an MLP. Only the deepest stage (the *source*) computes
query/key attention: channel-reduced queries (one number per head unless ``qk_dim`` widens them) against
channel-reduced keys of its pooled cells, ``A = softmax(q k^T * scale)`` of shape (B, heads, N_deep, M).
Shallower stages skip query/key work: they pool their own tokens onto the same M cells, project values, and reuse
the source map resized to their own query grid (``propagation``: bilinear or nearest; both keep every row a
probability distribution). Stage outputs are resized to stride 8, concatenated deep-to-shallow and fused.

Because resizing over the query grid is linear and ``A @ v`` acts on the key axis, ``resize(A) @ v`` equals
``resize(A @ v)``. The default path uses the right-hand side: the value mix runs at the deep stage's resolution
and only C channels are resized, instead of heads*M map channels. The propagated maps themselves are only
materialised when asked for (:meth:`CSAPHead.forward_with_attention`, :meth:`CSAPHead.stage_attention_inputs`).

``attention="independent"`` (per stage or for all) gives a stage its own query/key projections instead, which is
the ablation baseline and the reference for comparing propagated and independently computed maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath

from ..fused import FusedConv2d
from ...validation import check_dataclass, option
from ..layers import check_head_features, conv1x1_over_resized_concat, init_conv_linear

__all__ = ["CSAPHead", "CSAPHeadConfig", "StageAttentionInputs", "ATTENTION_MODES", "PROPAGATION_MODES"]

ATTENTION_MODES = ("propagate", "independent")
PROPAGATION_MODES = ("bilinear", "nearest")


def _resize(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PooledCells(nn.Module):
    """Average-pool a token grid onto coarse cells, then 1x1 conv -> LayerNorm -> GELU.

    ``ceil_mode`` keeps one cell per started ``pool_ratio`` window, so stages whose grids differ by exactly the
    pool-ratio factor land on the same number of cells for any input size.
    """

    def __init__(self, dim: int, pool_ratio: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_ratio, stride=pool_ratio, ceil_mode=True) if pool_ratio > 1 else nn.Identity()
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, M, C) and the cell grid (Hm, Wm)."""
        x = self.proj(self.pool(x))
        grid = (x.shape[-2], x.shape[-1])
        return self.act(self.norm(rearrange(x, "b c h w -> b (h w) c"))), grid


class StageAttention(nn.Module):
    """Attention of one stage's tokens over its pooled cells.

    With ``has_qk`` the stage computes its own map from channel-reduced queries and keys; without it the stage is
    value-only and must be given the (source) map to apply.
    """

    def __init__(self, dim: int, num_heads: int, pool_ratio: int, has_qk: bool, qk_dim: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"stage width {dim} is not divisible by num_heads={num_heads}; choose a head count "
                             f"that divides every stage's channel count")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.cells = PooledCells(dim, pool_ratio)
        self.q = nn.Linear(dim, num_heads * qk_dim) if has_qk else None
        self.k = nn.Linear(dim, num_heads * qk_dim) if has_qk else None
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    @property
    def has_qk(self) -> bool:
        return self.q is not None

    def logits(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """q k^T * scale of tokens (B, N, C) against cells (B, M, C): (B, heads, N, M)."""
        if self.q is None or self.k is None:
            raise ValueError("this stage is value-only: it has no query/key projections")
        q = rearrange(self.q(tokens), "b n (h d) -> b h n d", h=self.num_heads)
        k = rearrange(self.k(cells), "b m (h d) -> b h m d", h=self.num_heads)
        return (q @ k.transpose(-2, -1)) * self.scale

    def compute_map(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale): (B, heads, N, M)."""
        return torch.softmax(self.logits(tokens, cells), dim=-1)

    def values(self, cells: torch.Tensor) -> torch.Tensor:
        return rearrange(self.v(cells), "b m (h d) -> b h m d", h=self.num_heads)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CSAPBlock(nn.Module):
    """Pre-norm attention + MLP block for one decoder stage."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            pool_ratio: int,
            has_qk: bool,
            mlp_ratio: float = 2.0,
            drop_path: float = 0.0,
            qk_dim: int = 1,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = StageAttention(dim, num_heads, pool_ratio, has_qk, qk_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def attention_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """What this stage's attention reads from features (B, C, H, W): the LayerNorm'd query tokens (B, H*W, C),
        the pooled cells (B, M, C) and the cell grid (Hm, Wm)."""
        height, width = x.shape[-2:]
        normed = self.norm1(rearrange(x, "b c h w -> b (h w) c"))
        cells, cell_grid = self.attn.cells(rearrange(normed, "b (h w) c -> b c h w", h=height, w=width))
        return normed, cells, cell_grid

    def forward(
            self,
            x: torch.Tensor,
            source_map: Optional[torch.Tensor] = None,
            source_grid: Optional[Tuple[int, int]] = None,
            propagation: str = "bilinear",
            need_map: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Refine (B, C, H, W) features; returns them with the attention map used (if computed or requested).

        A value-only block takes ``source_map`` (B, heads, Hs*Ws, M) on the grid ``source_grid``.
        """
        height, width = x.shape[-2:]
        tokens = rearrange(x, "b c h w -> b (h w) c")
        normed, cells, cell_grid = self.attention_inputs(x)
        values = self.attn.values(cells)

        if self.attn.has_qk:
            attn_map: Optional[torch.Tensor] = self.attn.compute_map(normed, cells)
            mixed = rearrange(attn_map @ values, "b h n d -> b n (h d)")
        else:
            if source_map is None or source_grid is None:
                raise ValueError("a value-only CSAP stage needs the source stage's attention map")
            if source_map.shape[-1] != cells.shape[1]:
                raise ValueError(
                    f"the source map attends over {source_map.shape[-1]} cells but this stage pools onto "
                    f"{cells.shape[1]} (grid {cell_grid}); pool ratios must make every stage land on the same cells"
                )
            src_h, src_w = source_grid
            # resize(A) @ v == resize(A @ v): mix values on the source grid, then resize C channels only.
            # Token-major (channels_last) maps: the resize then returns channels_last, and going back to tokens
            # is a view instead of a copy of the full-resolution map.
            mixed = rearrange(source_map @ values, "b h n d -> b n (h d)")
            mixed = rearrange(mixed, "b (y x) c -> b c y x", y=src_h, x=src_w)
            mixed = rearrange(_resize(mixed, (height, width), propagation), "b c y x -> b (y x) c")
            attn_map = propagate_map(source_map, source_grid, (height, width), propagation) if need_map else None

        tokens = tokens + self.drop_path(self.attn.proj(mixed))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width), attn_map


def propagate_map(
        attn_map: torch.Tensor,
        source_grid: Tuple[int, int],
        target_grid: Tuple[int, int],
        propagation: str = "bilinear",
) -> torch.Tensor:
    """Resize an attention map (B, heads, Hs*Ws, M) over its query grid to (B, heads, Ht*Wt, M).

    Bilinear (align_corners=False) and nearest weights are convex, so every propagated row still sums to one.
    """
    num_heads, num_cells = attn_map.shape[1], attn_map.shape[-1]
    src_h, src_w = source_grid
    grid = rearrange(attn_map, "b h (y x) m -> b (h m) y x", y=src_h, x=src_w)
    grid = _resize(grid, target_grid, propagation)
    return rearrange(grid, "b (h m) y x -> b h (y x) m", h=num_heads, m=num_cells)


class StageAttentionInputs(NamedTuple):
    """One stage's attention inputs and the source map as propagation gives it to that stage (see
    :meth:`CSAPHead.stage_attention_inputs`)."""

    tokens: torch.Tensor  # (B, H*W, C): the stage's LayerNorm'd query tokens
    cells: torch.Tensor  # (B, M, C): its pooled cells
    grid: Tuple[int, int]  # (H, W): its query grid
    propagated: torch.Tensor  # (B, heads, H*W, M): the source map resized to this grid (at the source: itself)


class CSAPHead(nn.Module):
    """CSAP decode head over a list of backbone features (shallow to deep, e.g. strides 8, 16, 32).

    Args:
        in_channels: channels of each input feature, shallow to deep.
        num_classes: output classes.
        num_heads: attention heads of the source map, shared by every stage.
        pool_ratios: pooling ratio per input (shallow to deep); chosen so all stages pool onto the same cells.
        mlp_ratio: hidden width of each stage's MLP relative to the stage width.
        channels: width of the fusion layer.
        dropout: dropout before the classifier.
        drop_path: stochastic depth of the stage blocks.
        attention: "propagate" or "independent" for every non-deepest stage, or one entry per such stage.
        propagation: how the source map is resized to shallower grids: "bilinear" or "nearest".
        qk_dim: per-head width of queries and keys (1 = channel-reduced).
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            num_heads: int = 8,
            pool_ratios: Sequence[int] = (8, 4, 2),
            mlp_ratio: float = 2.0,
            channels: int = 128,
            dropout: float = 0.1,
            drop_path: float = 0.1,
            attention: Union[str, Sequence[str]] = "propagate",
            propagation: str = "bilinear",
            qk_dim: int = 1,
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) < 1:
            raise ValueError("CSAPHead needs at least one input feature")
        if len(pool_ratios) != len(in_channels):
            raise ValueError(f"pool_ratios needs one entry per input feature ({len(in_channels)}), "
                             f"got {tuple(pool_ratios)}")
        if propagation not in PROPAGATION_MODES:
            raise ValueError(f"propagation must be one of {PROPAGATION_MODES}, got {propagation!r}")
        modes = (attention,) * (len(in_channels) - 1) if isinstance(attention, str) else tuple(attention)
        if len(modes) != len(in_channels) - 1 or any(m not in ATTENTION_MODES for m in modes):
            raise ValueError(
                f"attention must be one of {ATTENTION_MODES} or a sequence of them, one per non-deepest stage "
                f"({len(in_channels) - 1}); got {attention!r}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.attention_modes = modes
        self.propagation = propagation
        # False: the fusion conv runs over the built concatenation (the reference form FLOP tables count).
        # True (set by reparameterize): each stage is projected before its resize; equal, cheaper.
        self.project_before_resize = False

        self.blocks = nn.ModuleList()
        for i, (dim, ratio) in enumerate(zip(in_channels, pool_ratios)):
            is_source = i == len(in_channels) - 1
            has_qk = is_source or modes[i] == "independent"
            self.blocks.append(CSAPBlock(dim, num_heads, ratio, has_qk, mlp_ratio, drop_path, qk_dim))
        self.fuse = nn.Sequential(
            nn.Conv2d(sum(in_channels), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.apply(init_conv_linear)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier for a new class count (e.g. to fine-tune on another dataset)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.classifier
        self.classifier = nn.Conv2d(old.in_channels, num_classes, 1, device=old.weight.device)
        init_conv_linear(self.classifier)
        self.num_classes = num_classes

    def forward_stages(
            self, features: Sequence[torch.Tensor], need_maps: bool = False,
    ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """Refine every input stage; returns the stage outputs and their attention maps (shallow to deep).

        Maps are (B, heads, H_i*W_i, M). Computed maps (source, independent stages) are always returned;
        propagated ones only with ``need_maps``.
        """
        check_head_features(features, self.in_channels, "CSAPHead")
        outputs: List[Optional[torch.Tensor]] = [None] * len(features)
        maps: List[Optional[torch.Tensor]] = [None] * len(features)
        source = len(features) - 1
        outputs[source], maps[source] = self.blocks[source](features[source])
        source_map = maps[source]
        source_grid = (features[source].shape[-2], features[source].shape[-1])
        for i in range(source - 1, -1, -1):
            outputs[i], maps[i] = self.blocks[i](
                features[i], source_map, source_grid, self.propagation, need_maps,
            )
        return [o for o in outputs if o is not None], maps

    def stage_attention_inputs(self, features: Sequence[torch.Tensor]) -> List[StageAttentionInputs]:
        """Per input stage (shallow to deep): its query tokens, pooled cells, grid, and the source stage's map
        propagated to that grid (this head's propagation mode), whatever the stage's own attention mode.

        These are the quantities an analysis compares a stage's own attention against; the stage blocks compute
        them the same way (:meth:`CSAPBlock.attention_inputs`).
        """
        check_head_features(features, self.in_channels, "CSAPHead")
        inputs = [block.attention_inputs(feat) for block, feat in zip(self.blocks, features)]
        grids = [(feat.shape[-2], feat.shape[-1]) for feat in features]
        source_tokens, source_cells, _ = inputs[-1]
        source_map = self.blocks[-1].attn.compute_map(source_tokens, source_cells)
        stages = []
        for (tokens, cells, _), grid in zip(inputs[:-1], grids[:-1]):
            propagated = propagate_map(source_map, grids[-1], grid, self.propagation)
            stages.append(StageAttentionInputs(tokens, cells, grid, propagated))
        stages.append(StageAttentionInputs(source_tokens, source_cells, grids[-1], source_map))
        return stages

    def reparameterize(self) -> "CSAPHead":
        """Prepare this head for inference, once and in place (see ``csap_zoo.models.fused``): each stage is
        projected before its resize, and the fusion's eval-mode BatchNorm is folded into that projection (a
        :class:`~csap_zoo.models.fused.FusedConv2d` keeps the folded weight and bias). Inference only afterwards:
        the fusion no longer has a BatchNorm to train, and its weights no longer load as a CSAP checkpoint."""
        conv, norm, act = self.fuse
        if isinstance(norm, nn.BatchNorm2d):
            self.fuse = nn.Sequential(FusedConv2d.from_conv(conv, norm), nn.Identity(), act)
        self.project_before_resize = True
        return self

    def _fuse(self, stage_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fusion of the stage outputs resized to the shallowest grid and concatenated deep-to-shallow."""
        size = (stage_outputs[0].shape[-2], stage_outputs[0].shape[-1])
        if self.project_before_resize:
            # the 1x1 projection commutes with the resize; after reparameterize() norm is an Identity (folded)
            conv, norm, act = self.fuse
            projected = conv1x1_over_resized_concat(list(reversed(stage_outputs)), conv.weight, size, conv.bias)
            fused = act(norm(projected))
        else:
            fused = self.fuse(torch.cat([_resize(x, size, "bilinear") for x in reversed(stage_outputs)], dim=1))
        return self.classifier(self.dropout(fused))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes, H0, W0) at the resolution of the shallowest input."""
        outputs, _ = self.forward_stages(features)
        return self._fuse(outputs)

    def forward_with_attention(
            self, features: Sequence[torch.Tensor],
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Logits plus every stage's attention map (B, heads, H_i*W_i, M), shallow to deep."""
        outputs, maps = self.forward_stages(features, need_maps=True)
        return self._fuse(outputs), [m for m in maps if m is not None]


@dataclass
class CSAPHeadConfig:
    """Hyper-parameters of a :class:`CSAPHead`; the input channels come from the backbone.

    Every field is checked on construction (type and bounds, see ``csap_zoo.validation``).
    """

    num_heads: int = option(8, 1, 64)
    pool_ratios: Tuple[int, ...] = option((8, 4, 2), 1, 128, length=(1, 8))
    mlp_ratio: float = option(2.0, 0, 16, low_open=True)
    channels: int = option(128, 1, 4096)
    dropout: float = option(0.1, 0, 1)
    drop_path: float = option(0.1, 0, 1)
    attention: Union[str, Tuple[str, ...]] = option("propagate", choices=ATTENTION_MODES, length=(1, 8))
    propagation: str = option("bilinear", choices=PROPAGATION_MODES)
    qk_dim: int = option(1, 1, 256)

    def __post_init__(self) -> None:
        check_dataclass(self)

    def build(self, in_channels: Sequence[int], num_classes: int) -> CSAPHead:
        return CSAPHead(
            in_channels, num_classes, num_heads=self.num_heads, pool_ratios=self.pool_ratios,
            mlp_ratio=self.mlp_ratio, channels=self.channels, dropout=self.dropout, drop_path=self.drop_path,
            attention=self.attention, propagation=self.propagation, qk_dim=self.qk_dim,
        )
