"""Params and GMACs of every registered architecture, backbone and head counted apart.

Runs at 1x3x512x512 with 150 classes (ADE20K setting) and 1x3x1024x1024 with 19 classes (Cityscapes setting).
GMACs are counted by fvcore (a multiply-accumulate counts once; segmentation papers call this "GFLOPs").
"GMACs" = backbone + head up to the head's stride-8 logits; "upsample" is what the counter charges for resizing
the logits to the input size, shown apart.

    python benchmarks/flops.py                      # all architectures, both settings
    python benchmarks/flops.py --models 'csap_tiny' 'segnext_tiny' --counter torchprofile --json out.json

Rows named csap_tiny[independent] / csap_tiny[nearest] are CSAP-T with per-stage query/key attention (no
propagation) and with nearest-neighbour propagation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import List

from csap_zoo.tools.complexity import COUNTERS, ComplexityReport, measure_complexity
from csap_zoo.models.registry import list_models

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
    names = sorted((n for n in list_models() if any(n in list_models(p) for p in patterns)), key=_size_then_name)
    if not names:
        parser.error(f"no architecture matches {patterns}")
    jobs = [(name, name, {}) for name in names]
    if not args.no_ablations and "csap_tiny" in names:
        jobs += list(ABLATIONS)
    reports = []
    for height, classes in SETTINGS:
        for label, name, options in jobs:
            report = measure_complexity(name, height, height, classes, counter=args.counter, label=label, **options)
            reports.append(report)
            print(f"counted {label} at {height}x{height}/{classes}: {report.gmacs:.2f} GMACs", file=sys.stderr)
    print(f"counter: {args.counter}\n")
    print(format_table(reports))
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as tmp:
            json.dump([r.to_dict() for r in reports], tmp, indent=2)
        os.replace(tmp.name, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
