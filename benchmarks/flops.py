"""Params and GMACs of every registered architecture, backbone and head counted apart.

Runs at 1x3x512x512 with 150 classes (ADE20K setting) and 1x3x1024x1024 with 19 classes (Cityscapes setting).
GMACs are counted by fvcore (a multiply-accumulate counts once; segmentation papers call this "GFLOPs").
"GMACs" = backbone + head up to the head's stride-8 logits; "upsample" is what the counter charges for resizing
the logits to the input size, shown apart.

    python benchmarks/flops.py                      # all architectures, both settings
    python benchmarks/flops.py --models 'csap_tiny' 'segnext_tiny' --counter torchprofile --json out.json

Rows named csap_tiny[independent] / csap_tiny[nearest] are CSAP-T with per-stage query/key attention (no
propagation) and with nearest-neighbour propagation.

With fvcore, each model is traced once at each setting (as ``measure_complexity`` does), except that a backbone
already traced at that input (CSAP and SegNeXt of one size share their MSCAN backbone, the ablations CSAP-T's) is not
run again: its MACs are taken from the first trace and the model is traced with the backbone standing in as the
features that trace produced, so the head and the rest of the model are still traced for real. The counts are the
same as tracing every model whole; the run does about 40% less work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

from csap_zoo.fileio import atomic_write
from csap_zoo.models.registry import build_model, list_architectures
from csap_zoo.tools.complexity import COUNTERS, ComplexityReport, _fvcore_by_part, _millions, measure_complexity

SETTINGS = ((512, 150), (1024, 19))
SIZE_ORDER = {"tiny": 0, "small": 1, "base": 2, "large": 3}
# CSAP-T ablations: what propagation saves against per-stage query/key (the MetaSeg-style decoder), and the
# cheaper nearest-neighbour propagation.
ABLATIONS = (
    ("csap_tiny[independent]", "csap_tiny", {"attention": "independent"}),
    ("csap_tiny[nearest]", "csap_tiny", {"propagation": "nearest"}),
)


def _size_then_name(name: str):
    return SIZE_ORDER.get(name.rsplit("_", 1)[-1], len(SIZE_ORDER)), name


class _Replay(nn.Module):
    """Stands in for a backbone already traced on the same input: returns the features that trace produced (no
    operations, so a trace counts nothing in it)."""

    def __init__(self, features: List[torch.Tensor]) -> None:
        super().__init__()
        self.features = list(features)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return list(self.features)


def _backbone_key(model: nn.Module, x: torch.Tensor) -> Tuple[Any, ...]:
    """What the backbone's MACs depend on: the backbone (its timm name, arguments and every layer's settings, as
    ``repr`` lists them) and the shape of what it is given (the input after the model's padding policy)."""
    config = model.config
    return (config.backbone, json.dumps(config.backbone_args, sort_keys=True, default=repr), config.in_chans,
            tuple(config.feature_strides), repr(model.backbone), tuple(model.prepare_input(x).shape))


@torch.no_grad()
def count_fvcore(name: str, height: int, width: int, num_classes: int, label: str = "",
                 backbones: Dict[Tuple[Any, ...], Tuple[int, List[torch.Tensor]]] = None,
                 **model_kwargs: Any) -> ComplexityReport:
    """``measure_complexity(..., counter="fvcore")``, with ``backbones`` remembering each backbone traced so far:
    a backbone already in it is not run again (see the module docstring); one that is not is traced and added."""
    model = build_model(name, num_classes=num_classes, **model_kwargs).eval()
    x = torch.randn(1, model.in_chans, height, width)
    params = (_millions(model), _millions(model.backbone), _millions(model.decode_head))
    key = _backbone_key(model, x)
    if backbones is None or key not in backbones:
        seen: List[Any] = []
        hook = model.backbone.register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            total, backbone, head = _fvcore_by_part(model, x)
        finally:
            hook.remove()
        if backbones is not None and len(seen) == 1:
            backbones[key] = (backbone, list(seen[0]))
    else:
        backbone, features = backbones[key]
        model.backbone = _Replay(features)
        rest, replayed, head = _fvcore_by_part(model, x)
        assert replayed == 0, replayed
        total = rest + backbone
    return ComplexityReport(
        name=label or name, height=height, width=width, num_classes=num_classes, counter="fvcore",
        params_m=params[0], backbone_params_m=params[1], head_params_m=params[2],
        backbone_gmacs=backbone / 1e9, head_gmacs=head / 1e9, upsample_gmacs=(total - backbone - head) / 1e9,
    )


def format_table(reports: List[ComplexityReport], baseline: str = "segnext") -> str:
    """Markdown table; the last column compares each CSAP model with the SegNeXt model of the same size."""
    by_key = {(r.name, r.height, r.num_classes): r for r in reports}
    lines = [
        "| model | input | classes | params (M) | backbone params | head params | backbone GMACs | head GMACs "
        "| GMACs | upsample GMACs | vs SegNeXt |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        ratio = ""
        if r.name.startswith("csap_"):
            arch = r.name.split("[", 1)[0]
            peer = by_key.get((arch.replace("csap_", f"{baseline}_", 1), r.height, r.num_classes))
            if peer is not None:
                ratio = f"{r.gmacs / peer.gmacs:.3f}x"
        lines.append(
            f"| {r.name} | {r.height}x{r.width} | {r.num_classes} | {r.params_m:.2f} | {r.backbone_params_m:.2f} "
            f"| {r.head_params_m:.2f} | {r.backbone_gmacs:.2f} | {r.head_gmacs:.2f} | {r.gmacs:.2f} "
            f"| {r.upsample_gmacs:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="architecture names or patterns (default: all)")
    parser.add_argument("--counter", choices=COUNTERS, default="fvcore")
    parser.add_argument("--no-ablations", action="store_true", help="skip the CSAP-T ablation rows")
    parser.add_argument("--json", default=None, help="also write the reports to this JSON file")
    args = parser.parse_args(argv)

    patterns = args.models or ["*"]
    names = sorted((n for n in list_architectures() if any(n in list_architectures(p) for p in patterns)),
                   key=_size_then_name)
    if not names:
        parser.error(f"no architecture matches {patterns}")
    jobs = [(name, name, {}) for name in names]
    if not args.no_ablations and "csap_tiny" in names:
        jobs += list(ABLATIONS)
    reports = []
    for height, classes in SETTINGS:
        backbones: Dict[Tuple[Any, ...], Tuple[int, List[torch.Tensor]]] = {}
        for label, name, options in jobs:
            if args.counter == "fvcore":
                report = count_fvcore(name, height, height, classes, label=label, backbones=backbones, **options)
            else:
                report = measure_complexity(name, height, height, classes, counter=args.counter, label=label,
                                            **options)
            reports.append(report)
            print(f"counted {label} at {height}x{height}/{classes}: {report.gmacs:.2f} GMACs", file=sys.stderr)
    print(f"counter: {args.counter}\n")
    print(format_table(reports))
    if args.json:
        text = json.dumps([r.to_dict() for r in reports], indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
