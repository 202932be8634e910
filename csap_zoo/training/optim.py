"""The optimisation recipe: AdamW parameter groups (which parameters get which learning rate and weight decay), the
warmup + poly learning-rate schedule and the mixed-precision dtype.

A rule set is a list of ``ParamRule`` (a name substring with lr and decay multipliers). Matching follows
MMSegmentation's ``paramwise_cfg.custom_keys``: the keys are tried longest first (ties in alphabetical order), the
first key contained in a parameter's full name (``backbone.stages_0.blocks.0.norm1.weight``) decides its lr and
decay, and a parameter no key matches gets the base lr and weight decay.

Named rule sets (``TrainConfig.param_rules``):
- ``"mmseg"``: the official SegNeXt configs' ``custom_keys``: ``pos_block`` and ``norm`` without weight decay,
  ``head`` at ``head_lr_mult`` x lr. Biases and layer scales are decayed, and normalisation layers whose names do not
  contain ``norm`` (the stem's BatchNorms, the decoder's GroupNorms) are too: that is what the official code does.
  Our MSCAN parameter names contain ``norm`` exactly where the official layout's do, so the rule picks the same
  parameters as it does on an official checkpoint's names.
- ``"no-decay-1d"``: ``head`` at ``head_lr_mult`` x lr; every 1-D parameter, every bias, every normalisation layer's
  parameter and every layer scale without weight decay (timm's convention).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["PARAM_RULE_SETS", "ParamRule", "WarmupPoly", "amp_dtype", "autocast", "build_optimizer",
           "describe_param_groups", "param_groups", "resolve_param_rules"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class ParamRule:
    """Parameters whose full name contains ``key`` train at ``lr * lr_mult`` with ``weight_decay * decay_mult``."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"a parameter rule needs a non-empty name substring as key, got {self.key!r}")
        for name in ("lr_mult", "decay_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e4:
                raise ValueError(f"parameter rule {self.key!r}: {name} must be a number in [0, 10000], "
                                 f"got {value!r}")


PARAM_RULE_SETS = ("mmseg", "no-decay-1d")
RuleSpec = Union[str, Sequence[Union[ParamRule, Dict[str, Any]]]]


def resolve_param_rules(spec: RuleSpec, head_lr_mult: float) -> Tuple[List[ParamRule], bool]:
    """The rules a spec stands for, and whether 1-D parameters are exempt from decay (``no-decay-1d``).

    ``spec`` is a named rule set or a list of rules (``ParamRule`` or ``{"key", "lr_mult", "decay_mult"}`` dicts).
    """
    if isinstance(spec, str):
        if spec == "mmseg":
            return [ParamRule("pos_block", decay_mult=0.0), ParamRule("norm", decay_mult=0.0),
                    ParamRule("head", lr_mult=head_lr_mult)], False
        if spec == "no-decay-1d":
            return [ParamRule("decode_head.", lr_mult=head_lr_mult)], True
        raise ValueError(f"unknown parameter rule set {spec!r}; use one of {PARAM_RULE_SETS} or a list of "
                         f"{{key, lr_mult, decay_mult}} rules")
    rules = []
    for item in spec:
        if isinstance(item, ParamRule):
            rules.append(item)
        elif isinstance(item, dict):
            unknown = set(item) - {"key", "lr_mult", "decay_mult"}
            if unknown or "key" not in item:
                raise ValueError(f"a parameter rule is {{key, lr_mult, decay_mult}}, got {item!r}")
            rules.append(ParamRule(**item))
        else:
            raise ValueError(f"a parameter rule is {{key, lr_mult, decay_mult}}, got {item!r}")
    return rules, False


def _match(name: str, ordered: Sequence[ParamRule]) -> Optional[ParamRule]:
    return next((rule for rule in ordered if rule.key in name), None)


def param_groups(model: nn.Module, lr: float, weight_decay: float, rules: RuleSpec = "mmseg",
                 head_lr_mult: float = 10.0) -> List[Dict[str, Any]]:
    """AdamW parameter groups of ``model`` under ``rules``: one group per distinct (lr, weight decay).

    Each group carries ``name`` (``lr x<mult> decay x<mult>``) and ``param_names`` for inspection.
    """
    ordered, exempt_1d = resolve_param_rules(rules, head_lr_mult)
    ordered = sorted(sorted(ordered, key=lambda r: r.key), key=lambda r: len(r.key), reverse=True)
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(False)}
    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        rule = _match(name, ordered)
        lr_mult = rule.lr_mult if rule else 1.0
        decay_mult = rule.decay_mult if rule else 1.0
        if exempt_1d and (param.ndim <= 1 or name.endswith(".bias") or id(param) in norm_params
                          or "gamma" in name):
            decay_mult = 0.0
        group = groups.setdefault((lr_mult, decay_mult), {
            "params": [], "param_names": [], "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult,
            "name": f"lr x{lr_mult:g} decay x{decay_mult:g}",
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def describe_param_groups(groups: Sequence[Dict[str, Any]]) -> str:
    """One line per group: tensor and element counts with the group's lr and weight decay."""
    lines = []
    for group in groups:
        count = len(group["params"])
        numel = sum(p.numel() for p in group["params"])
        prefixes = Counter(n.split(".", 1)[0] for n in group.get("param_names", []))
        where = ", ".join(f"{k} {v}" for k, v in sorted(prefixes.items()))
        lines.append(f"  {group.get('name', '')}: {count} tensors ({numel / 1e6:.2f} M values; {where}) "
                     f"lr {group['lr']:.3g} weight_decay {group['weight_decay']:.3g}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- schedule and precision
class WarmupPoly:
    """LR factor: linear warmup from ``warmup_ratio`` over ``warmup_iters``, then poly decay to ``min_ratio``."""

    def __init__(self, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float, min_ratio: float):
        self.max_iters, self.warmup_iters, self.warmup_ratio = max_iters, warmup_iters, warmup_ratio
        self.power, self.min_ratio = power, min_ratio

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * it / self.warmup_iters
        span = max(self.max_iters - self.warmup_iters, 1)
        progress = min(max(it - self.warmup_iters, 0) / span, 1.0)
        return (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio


def build_optimizer(groups: List[Dict[str, Any]], config: TrainConfig
                    ) -> Tuple[torch.optim.AdamW, WarmupPoly, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``groups`` (from :func:`param_groups`), the config's warmup + poly schedule, and the scheduler
    that applies it once per optimiser step (it sets the warmup factor of step 0 at once)."""
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    schedule = WarmupPoly(config.max_iters, config.warmup_iters, config.warmup_ratio, config.poly_power,
                          config.min_lr / config.lr)
    return optimizer, schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``TrainConfig.amp`` on ``device`` (None: full precision). ``"auto"`` is bf16 where the
    GPU has it, else fp16, and full precision on the CPU."""
    if setting == "none":
        return None
    if device.type != "cuda":
        if setting == "fp16":
            raise ValueError("amp='fp16' needs CUDA; on the CPU use amp='bf16' or 'none'")
        return torch.bfloat16 if setting == "bf16" else None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(dtype: Optional[torch.dtype], device: torch.device) -> ContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or no change when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
