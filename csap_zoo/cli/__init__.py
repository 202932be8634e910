"""The ``csap-zoo`` command line: parses arguments, calls the public API, prints.

The parser is built from the standard library and the package's light modules only (constants, errors, version):
``csap-zoo --help`` and ``csap-zoo COMMAND --help`` never import torch, timm or torchvision. Each command imports
what it runs when it runs.

One module per group of commands (hub, predict_eval, train, bench_export); this one builds the parser and runs
a command.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

from ..errors import CsapZooError, UsageError
from ..version import __version__
from .bench_export import add_bench_export_commands
from .common import check_device
from .hub import add_hub_commands, add_models_command
from .predict_eval import add_predict_eval_commands, check_pairs
from .train import add_train_command


def build_parser() -> argparse.ArgumentParser:
    """The ``csap-zoo`` parser with every subcommand; building it imports no heavy library."""
    parser = argparse.ArgumentParser(
        prog="csap-zoo", description="Efficient semantic segmentation with Cross-Stage Attention Propagation.",
    )
    parser.add_argument("--version", action="version", version=f"csap-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_models_command(sub)
    add_predict_eval_commands(sub)
    add_hub_commands(sub)
    add_bench_export_commands(sub)
    add_train_command(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: its message alone, without the code location or source line."""
    return f"warning: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Run one csap-zoo command; warnings print as ``warning: ...`` and known failures as one ``error: ...``
    line (exit status 1, or 2 for an option this machine cannot honour)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if args.command in ("predict", "eval"):
        check_pairs(parser, args)
    original_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        if args.command in ("predict", "eval", "train"):
            check_device(args.device)
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CsapZooError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = original_format
