"""What several commands share: the model a ``--model`` value names, and a ``--device`` check made before any
model is built. Torch and the package's heavy modules are imported inside the functions."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..errors import UsageError


def is_saved_model(name: str) -> bool:
    """Whether a --model value names a save_pretrained folder or a Hub repository (it carries its weights).
    A weights file is refused with what to pass instead."""
    if os.path.isfile(name):
        raise UsageError(f"--model {name} is a file; give the architecture or manifest name with --model and the "
                         f"file with --checkpoint {name}")
    return name.startswith("hf-hub:") or os.path.isdir(name)


def saved_model(name: str, weights_option: Optional[str] = None):
    """The model of a save_pretrained folder or an hf-hub: id, through csap_zoo.from_pretrained."""
    from .. import from_pretrained

    if weights_option:
        raise UsageError(f"{name} carries its own weights; drop {weights_option} (it is for architecture and "
                         f"manifest names)")
    return from_pretrained(name)


def load_model(args: argparse.Namespace, num_classes: Optional[int] = None):
    """The model named by --model (a manifest name, an architecture, a save_pretrained folder or an hf-hub: id),
    with weights from --checkpoint (file or saved folder) or --pretrained."""
    from .. import create_model

    pretrained = args.checkpoint or args.pretrained
    if is_saved_model(args.model):
        return saved_model(args.model, "--checkpoint" if args.checkpoint else "--pretrained" if pretrained else None)
    if not pretrained:
        print(f"warning: {args.model} has random weights (pass --pretrained or --checkpoint PATH)", file=sys.stderr)
    return create_model(args.model, pretrained=pretrained, num_classes=num_classes)


def check_device(device: Optional[str]) -> None:
    """Refuse a --device this machine does not have, before any model is built."""
    if device is None or device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                             f"False: no GPU or driver, or a CPU-only torch build); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
