"""SegNeXt's LightHam decoder: a "Hamburger" built around non-negative matrix factorisation (NMF).

The head resizes the features it receives (stages 2-4 of MSCAN: strides 8, 16 and 32) to the shallowest one's
grid, concatenates and squeezes them, and runs one Hamburger: a 1x1 conv + ReLU ("upper bread"), an NMF low-rank
reconstruction of the (channels x pixels) matrix ("ham"), and a 1x1 conv + GroupNorm ("lower bread") added back to
the input. An align layer and a 1x1 classifier give stride-8 logits.

NMF starts from fresh random bases on every call (or, with a seed, from fixed bases drawn once from that seed) and
refines them with a few multiplicative updates followed by one last coefficient update. Training backpropagates
through every update by default (``nmf_grad="full"``); ``"one-step"`` runs the iterations without gradient and
differentiates only the last update (the cheaper one-step gradient of the Hamburger paper). The forward pass is the
same either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...validation import ConfigError, check_dataclass, option
from ..layers import check_head_features, conv1x1_over_resized_concat

__all__ = ["NMF2D", "NMF_GRAD_MODES", "Hamburger", "LightHamHead", "HamHeadConfig", "mmseg_checkpoint_filter_fn"]

# How training differentiates the NMF: through every update, or through the last coefficient update only.
NMF_GRAD_MODES = ("full", "one-step")


def _check_nmf_options(grad: Any, seed: Any) -> None:
    if grad not in NMF_GRAD_MODES:
        raise ValueError(f"nmf_grad must be one of {NMF_GRAD_MODES} ('full': backpropagate through every NMF "
                         f"update, as SegNeXt; 'one-step': through the last one only), got {grad!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise ValueError(f"nmf_seed must be None (fresh random bases on every call) or an integer in [0, 2**63), "
                         f"got {seed!r}")


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map, solved by multiplicative updates.

    A (B, C, H, W) input is viewed as ``B * num_splits`` matrices X of shape (D, N) with ``D = C / num_splits`` and
    ``N = H * W``, factorised as ``X ~ bases @ coef^T`` with bases (D, R) and coef (N, R). The module has no
    parameters; the result is the low-rank reconstruction, reshaped back to (B, C, H, W). The input is expected to
    be non-negative (the Hamburger feeds it a ReLU output).

    Args:
        channels: C of the input.
        num_bases: rank R of the factorisation.
        num_splits: number of channel groups factorised independently (S).
        train_steps: update iterations in training mode.
        eval_steps: update iterations in eval mode.
        inv_t: inverse temperature of the softmax that initialises the coefficients.
        eps: added to every denominator of the multiplicative updates.
        grad: ``"full"`` backpropagates through every update; ``"one-step"`` runs the iterations without gradient
            and differentiates only the final coefficient update (less time and memory in training).
        seed: None draws fresh bases from the global RNG on every call. An integer fixes the initial bases to one
            (S, D, R) draw from a CPU generator seeded with it, shared by every image of a batch: calls are then
            repeatable (on any device, independent of the global RNG) and traced or exported graphs keep them as
            a constant. The fixed bases are a non-persistent float32 buffer: never in the state dict.
    """

    def __init__(
            self,
            channels: int,
            num_bases: int = 16,
            num_splits: int = 1,
            train_steps: int = 6,
            eval_steps: int = 7,
            inv_t: float = 1.0,
            eps: float = 1e-6,
            grad: str = "full",
            seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        _check_nmf_options(grad, seed)
        if num_splits < 1 or channels % num_splits:
            raise ValueError(f"NMF2D: channels ({channels}) must be divisible by num_splits ({num_splits})")
        if num_bases < 1:
            raise ValueError(f"NMF2D: num_bases must be >= 1, got {num_bases}")
        if train_steps < 0 or eval_steps < 0:
            raise ValueError(f"NMF2D: train_steps and eval_steps must be >= 0, got {train_steps} and {eval_steps}")
        self.channels = channels
        self.num_bases = num_bases
        self.num_splits = num_splits
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.inv_t = inv_t
        self.eps = eps
        self.grad = grad
        self.seed: Optional[int] = None
        self.register_buffer("fixed_bases", None, persistent=False)
        self.set_seed(seed)

    def set_seed(self, seed: Optional[int], device: Optional[torch.device] = None) -> None:
        """Fix the initial bases to the draw of ``seed`` (None: fresh random bases on every call), kept on
        ``device`` (default: where they were, else the CPU)."""
        _check_nmf_options(self.grad, seed)
        if device is None:
            device = self.fixed_bases.device if self.fixed_bases is not None else torch.device("cpu")
        self.seed = seed
        self.fixed_bases = None if seed is None else self._seeded_bases(seed, device)

    def _seeded_bases(self, seed: int, device: torch.device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (self.num_splits, self.channels // self.num_splits, self.num_bases)
        bases = torch.rand(shape, generator=gen, device="cpu")  # the same numbers whatever the default device
        return F.normalize(bases, dim=1).to(device)

    def _apply(self, fn, *args, **kwargs):
        # Module.to / .half / .to_empty would cast or blank the fixed bases: redraw them (float32, the NMF's
        # precision) on whatever device the move put them.
        super()._apply(fn, *args, **kwargs)
        if self.seed is not None and self.fixed_bases is not None:
            self.fixed_bases = self._seeded_bases(self.seed, self.fixed_bases.device)
        return self

    @property
    def steps(self) -> int:
        """Number of update iterations the current mode runs (before the final coefficient update)."""
        return self.train_steps if self.training else self.eval_steps

    def init_bases(self, batch: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Non-negative bases (batch, dim, R), each column of unit L2 norm: random, or the seeded ones repeated
        over the ``batch / num_splits`` images (``batch`` counts matrices, image-major)."""
        if self.fixed_bases is not None:
            fixed = self.fixed_bases.to(device=device, dtype=dtype)
            return fixed.unsqueeze(0).expand(batch // self.num_splits, -1, -1, -1).reshape(batch, dim, self.num_bases)
        bases = torch.rand(batch, dim, self.num_bases, device=device, dtype=dtype)
        return F.normalize(bases, dim=1)

    def update_coef(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """coef <- coef * (X^T bases) / (coef (bases^T bases) + eps).

        Shapes: x (b, D, N), bases (b, D, R), coef (b, N, R).
        """
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = torch.bmm(coef, torch.bmm(bases.transpose(1, 2), bases))
        return coef * numerator / (denominator + self.eps)

    def update_bases(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """bases <- bases * (X coef) / (bases (coef^T coef) + eps)."""
        numerator = torch.bmm(x, coef)
        denominator = torch.bmm(bases, torch.bmm(coef.transpose(1, 2), coef))
        return bases * numerator / (denominator + self.eps)

    def step(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One multiplicative-update iteration: coefficients first, then bases."""
        coef = self.update_coef(x, bases, coef)
        bases = self.update_bases(x, bases, coef)
        return bases, coef

    def decompose(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Factorise matrices x (b, D, N) into bases (b, D, R) and coef (b, N, R).

        ``self.steps`` iterations, then a final coefficient update. With ``grad="one-step"`` the iterations run
        without gradient and only the final update is differentiable w.r.t. x; with ``"full"`` all of them are.
        """
        bases = self.init_bases(x.shape[0], x.shape[1], x.device, x.dtype)
        coef = torch.softmax(self.inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)
        with torch.set_grad_enabled(self.grad == "full" and torch.is_grad_enabled()):
            for _ in range(self.steps):
                bases, coef = self.step(x, bases, coef)
        coef = self.update_coef(x, bases, coef)
        return bases, coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> its rank-R reconstruction, same shape and dtype."""
        b, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"NMF2D expects {self.channels} channels, got {c}")
        dtype = x.dtype
        # Multiplicative updates divide by small numbers: keep them in float32 even under mixed precision.
        autocast_device = x.device.type if x.device.type in ("cpu", "cuda", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=autocast_device, enabled=False):
            mats = x.float().reshape(b * self.num_splits, c // self.num_splits, h * w)
            bases, coef = self.decompose(mats)
            recon = torch.bmm(bases, coef.transpose(1, 2))
        return recon.reshape(b, c, h, w).to(dtype)


class Hamburger(nn.Module):
    """ReLU(x + GN(conv(NMF(ReLU(conv(x)))))): 1x1 conv in, matrix decomposition, 1x1 conv out, residual."""

    def __init__(
            self,
            channels: int,
            num_bases: int = 16,
            train_steps: int = 6,
            eval_steps: int = 7,
            num_groups: int = 32,
            nmf_grad: str = "full",
            nmf_seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1, bias=True)
        self.ham = NMF2D(channels, num_bases=num_bases, train_steps=train_steps, eval_steps=eval_steps,
                         grad=nmf_grad, seed=nmf_seed)
        self.ham_out = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.GroupNorm(num_groups, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.ham_in(x))
        y = self.ham_out(self.ham(y))
        return F.relu(x + y)


def _conv_gn_relu(in_channels: int, out_channels: int, num_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.GroupNorm(num_groups, out_channels),
        nn.ReLU(inplace=True),
    )


class LightHamHead(nn.Module):
    """SegNeXt's decode head over a list of backbone features (shallow to deep, e.g. strides 8, 16, 32).

    Args:
        in_channels: channels of each input feature, shallow to deep (MSCAN-T stages 2-4: (64, 160, 256)).
        num_classes: output classes.
        ham_channels: width of the squeeze layer and the Hamburger.
        channels: width of the align layer that feeds the classifier.
        num_bases: NMF rank R.
        train_steps: NMF iterations in training mode.
        eval_steps: NMF iterations in eval mode.
        num_groups: GroupNorm groups of every normalisation layer.
        dropout: channel dropout before the classifier.
        align_corners: passed to the bilinear resize of the deeper inputs.
        nmf_grad: ``"full"`` (backpropagate through every NMF update, as SegNeXt) or ``"one-step"``.
        nmf_seed: None (fresh random NMF bases on every call, as SegNeXt) or a seed for fixed, repeatable bases.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            ham_channels: int = 256,
            channels: int = 256,
            num_bases: int = 16,
            train_steps: int = 6,
            eval_steps: int = 7,
            num_groups: int = 32,
            dropout: float = 0.1,
            align_corners: bool = False,
            nmf_grad: str = "full",
            nmf_seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        _check_nmf_options(nmf_grad, nmf_seed)
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) < 1:
            raise ValueError("LightHamHead needs at least one input feature")
        if any(c < 1 for c in in_channels):
            raise ValueError(f"LightHamHead: every in_channels entry must be >= 1, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        for name, width in (("ham_channels", ham_channels), ("channels", channels)):
            if width < 1 or width % num_groups:
                raise ValueError(f"LightHamHead: {name}={width} must be a positive multiple of "
                                 f"num_groups={num_groups} (GroupNorm)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        # False: squeeze runs over the built concatenation (the reference form FLOP tables count). True (set by
        # reparameterize): each input is projected before its resize; equal up to rounding, cheaper.
        self.project_before_resize = False

        self.squeeze = _conv_gn_relu(sum(in_channels), ham_channels, num_groups)
        self.hamburger = Hamburger(ham_channels, num_bases, train_steps, eval_steps, num_groups,
                                   nmf_grad=nmf_grad, nmf_seed=nmf_seed)
        self.align = _conv_gn_relu(ham_channels, channels, num_groups)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.apply(self._init_weights)
        self._init_classifier(self.classifier)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def _init_classifier(conv: nn.Conv2d) -> None:
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)

    def set_nmf_seed(self, seed: Optional[int]) -> None:
        """Fix the NMF's initial bases to the draw of ``seed`` for repeatable outputs; None restores fresh random
        bases on every call. (A saved config records the seed given at construction, not this call.)"""
        self.hamburger.ham.set_seed(seed, device=self.classifier.weight.device)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier for a new class count (e.g. to fine-tune on another dataset)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.classifier
        self.classifier = nn.Conv2d(old.in_channels, num_classes, 1, device=old.weight.device, dtype=old.weight.dtype)
        self._init_classifier(self.classifier)
        self.num_classes = num_classes

    def reparameterize(self) -> "LightHamHead":
        """Prepare this head for inference in place (see ``csap_zoo.models.fused``): each input is projected before
        its resize. Nothing is folded (the squeeze's GroupNorm depends on the input), so the weights stay as
        they are."""
        self.project_before_resize = True
        return self

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes, H0, W0) at the resolution of features[0] (the shallowest input)."""
        check_head_features(features, self.in_channels, "LightHamHead")
        size = (features[0].shape[-2], features[0].shape[-1])
        if self.project_before_resize:
            conv, norm, act = self.squeeze
            x = act(norm(conv1x1_over_resized_concat(features, conv.weight, size, conv.bias,
                                                     align_corners=self.align_corners)))
        else:
            resized = [features[0]] + [
                F.interpolate(f, size=size, mode="bilinear", align_corners=self.align_corners) for f in features[1:]
            ]
            x = self.squeeze(torch.cat(resized, dim=1))
        x = self.align(self.hamburger(x))
        return self.classifier(self.dropout(x))


@dataclass
class HamHeadConfig:
    """Hyper-parameters of a :class:`LightHamHead`; the input channels come from the backbone.

    Every field is checked on construction (type and bounds, see ``csap_zoo.validation``).
    """

    ham_channels: int = option(256, 1, 4096)
    channels: int = option(256, 1, 4096)
    num_bases: int = option(16, 1, 1024)
    train_steps: int = option(6, 0, 100)
    eval_steps: int = option(7, 0, 100)
    num_groups: int = option(32, 1, 4096)
    dropout: float = option(0.1, 0, 1)
    # Absent from config.json files written before they existed: such files get these defaults. Inference is the
    # same as with the code that wrote them (random bases, same forward); training now uses the full gradient.
    nmf_grad: str = option("full", choices=NMF_GRAD_MODES)
    nmf_seed: Optional[int] = option(None, 0, 2 ** 63 - 1)

    def __post_init__(self) -> None:
        check_dataclass(self)
        for name in ("ham_channels", "channels"):  # GroupNorm splits both widths into num_groups groups
            if getattr(self, name) % self.num_groups:
                raise ConfigError(f"must divide {name}={getattr(self, name)} (GroupNorm groups)", field="num_groups")

    def build(self, in_channels: Sequence[int], num_classes: int) -> LightHamHead:
        return LightHamHead(
            in_channels, num_classes, ham_channels=self.ham_channels, channels=self.channels,
            num_bases=self.num_bases, train_steps=self.train_steps, eval_steps=self.eval_steps,
            num_groups=self.num_groups, dropout=self.dropout, nmf_grad=self.nmf_grad, nmf_seed=self.nmf_seed,
        )


# MMSegmentation's LightHamHead names -> ours (its ConvModules call the conv "conv" and the GroupNorm "gn").
_MMSEG_RENAMES = (
    ("squeeze.conv.", "squeeze.0."),
    ("squeeze.gn.", "squeeze.1."),
    ("hamburger.ham_in.conv.", "hamburger.ham_in."),
    ("hamburger.ham_out.conv.", "hamburger.ham_out.0."),
    ("hamburger.ham_out.gn.", "hamburger.ham_out.1."),
    ("align.conv.", "align.0."),
    ("align.gn.", "align.1."),
    ("conv_seg.", "classifier."),
)


def mmseg_checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the keys of an MMSegmentation LightHamHead (without the ``decode_head.`` prefix) to this module's.

    Keys it does not know are kept unchanged, so that a strict load reports them.
    """
    out = {}
    for key, value in state_dict.items():
        for old, new in _MMSEG_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
