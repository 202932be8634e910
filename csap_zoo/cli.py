"""The ``csap-zoo`` command line: parses arguments, calls the public API, prints."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from . import __version__
from .models.registry import create_model, get_architecture, list_models


def _count_params_m(name: str) -> float:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(name)
    return sum(p.numel() for p in model.parameters()) / 1e6


def _cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no architecture matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = [("name", "backbone", "params (M)", "description")]
    for name in names:
        arch = get_architecture(name)
        rows.append((name, arch.backbone, f"{_count_params_m(name):.2f}", arch.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csap-zoo", description="Efficient semantic segmentation with Cross-Stage Attention Propagation.",
    )
    parser.add_argument("--version", action="version", version=f"csap-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser("models", help="list the registered architectures",
                            description="List the registered architectures with their backbone and size.")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'csap_*' (default: all)")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
