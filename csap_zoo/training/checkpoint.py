"""Training checkpoint files: ``iter_<N>.pt`` archives of tensors and plain values (``torch.load(weights_only=True)``
reads them), written atomically and durably, found, checked for readability and set aside when they cannot serve
a resume."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..fileio import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "checkpoints_in", "is_readable_checkpoint", "iteration_in_name", "load_training_checkpoint", "rng_state",
           "save_checkpoint_file", "set_aside", "set_rng_state"]

CHECKPOINT_FORMAT = "csap-zoo-train"
_CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")


def rng_state() -> Dict[str, Any]:
    """This process's torch, numpy, Python (and CUDA) random states as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint_file(obj: Any, path: Path) -> None:
    """``torch.save`` through the atomic writer, flushed to disk before the rename (a crash loses no checkpoint)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def load_training_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a checkpoint file (e.g. {path}/checkpoints/iter_<N>.pt)")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable training checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a csap-zoo training checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def checkpoints_in(folder: Path) -> List[Tuple[int, Path]]:
    """``(iteration in the name, path)`` of every ``iter_<N>.pt`` in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def is_readable_checkpoint(path: Path) -> bool:
    """A cheap readability check: the archive and its record structure load (tensor data memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and "iteration" in state


def iteration_in_name(path: Path) -> Optional[int]:
    """The ``N`` of an ``iter_<N>.pt`` file name, or None for any other name."""
    match = _CKPT_RE.match(path.name)
    return None if match is None else int(match.group(1))


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>`` (numbered if taken), out of reach of resume and retention."""
    target, n = path.with_name(f"{path.name}.{tag}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{tag}{n}"), n + 1
    os.replace(path, target)
    return target
