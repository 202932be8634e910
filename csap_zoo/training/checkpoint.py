"""Training checkpoint files: ``iter_<N>.pt`` archives of tensors and plain values (``torch.load(weights_only=True)``
reads them), written atomically and durably, found, checked for readability and set aside when they cannot serve
a resume; :class:`CheckpointFolder` is a run's ``checkpoints/`` folder (which checkpoint to resume, retention,
the temporaries of a killed run).

After a crash (even SIGKILL) a resume continues from the newest *readable* checkpoint:
- retention (``keep_checkpoints``) never removes the checkpoint just written and counts only readable ones; a
  file that cannot be read is renamed ``iter_<N>.pt.unreadable`` and one with a later iteration than the run
  that just wrote a checkpoint (a different run's) ``iter_<N>.pt.superseded``, each with a warning;
- the temporaries a killed process leaves (``checkpoints/.iter_*.tmp``, staging folders ``.best.*.tmp`` and
  ``.final.*.tmp``, only csap-zoo's own names and marked folders) are removed at the next start when their writer
  is provably gone, or, from another host or PID namespace, untouched for an hour (see ``csap_zoo.fileio``).
"""
from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import numpy as np
import torch

from ..fileio import atomic_write, clean_stale_temp

__all__ = ["CHECKPOINT_FORMAT", "CheckpointFolder", "check_optimizer_fits", "checkpoints_in", "is_readable_checkpoint",
           "iteration_in_name", "load_training_checkpoint", "rng_state", "save_checkpoint_file", "set_aside",
           "set_rng_state"]

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


def check_optimizer_fits(state: Dict[str, Any], path: Path, param_rules: Any, group_count: int) -> None:
    """Refuse a checkpoint whose optimiser state was made under other parameter rules (its groups would not line
    up with this run's ``group_count`` groups)."""
    saved_rules = state.get("config", {}).get("param_rules", "no-decay-1d")  # older versions had only that rule
    saved_groups = len(state["optimizer"].get("param_groups", []))
    if saved_rules != param_rules or saved_groups != group_count:
        raise ValueError(
            f"{path} was trained with param_rules={saved_rules!r} ({saved_groups} parameter groups); this "
            f"config has param_rules={param_rules!r} ({group_count} groups), "
            f"so its optimiser state does not fit. Resume with param_rules={saved_rules!r}, or start a new run.")


class CheckpointFolder:
    """A run's ``checkpoints/`` folder under ``out_dir``: the checkpoint a resume starts from, writing with
    retention, and the removal of a killed run's temporaries. ``log`` reports what was skipped or moved;
    ``is_main``: this process may rename files (rank 0)."""

    def __init__(self, out_dir: Path, keep: int, is_main: bool, log: Callable[[str], None]) -> None:
        self.out_dir, self.path = out_dir, out_dir / "checkpoints"
        self.keep, self.is_main, self.log = keep, is_main, log
        self._good: Set[Path] = set()  # checkpoints this run wrote, loaded or found readable

    def mark_good(self, path: Path) -> None:
        """Remember ``path`` as readable, so that retention does not read it again."""
        self._good.add(path.resolve())

    def clean_leftovers(self) -> None:
        """Remove the temporaries of a killed run whose writer is gone (never a live writer's)."""
        removed = (clean_stale_temp(self.path, r"iter_\d+\.pt")
                   + clean_stale_temp(self.out_dir, r"best|final|log\.jsonl"))
        for path in removed:
            self.log(f"removed {path}, left behind by a run that was killed")

    def _newest_readable(self, folder: Path, own_folder: bool) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """The newest checkpoint in ``folder`` that loads, with its state. Unreadable ones above it are reported
        and, in ``own_folder`` (this run's own folder, rank 0), renamed out of the way."""
        for _, path in reversed(checkpoints_in(folder)):
            try:
                return path, load_training_checkpoint(path)
            except ValueError as err:  # a damaged file (it never should be: writes are atomic)
                note = ""
                if own_folder and self.is_main:
                    with contextlib.suppress(OSError):
                        note = f"; renamed it {set_aside(path, 'unreadable').name}"
                self.log(f"warning: skipping unreadable checkpoint {path}{note}: {err}")
        return None

    def find_resume(self, resume: Optional[str]) -> Optional[Tuple[Path, Optional[Dict[str, Any]]]]:
        """The checkpoint ``TrainConfig.resume`` points to (None: start afresh) and its state when it was already
        read: ``"auto"`` is the newest readable one of this folder, a folder is searched (and its checkpoints/),
        anything else is a checkpoint file."""
        if resume is None:
            return None
        if resume == "auto":
            return self._newest_readable(self.path, own_folder=True)
        path = Path(resume)
        if path.is_dir():  # an output folder or a checkpoints folder
            inner = path / "checkpoints"
            found = self._newest_readable(inner, own_folder=False) if inner.is_dir() else None
            found = found or self._newest_readable(path, own_folder=False)
            if found is None:
                raise ValueError(f"resume={resume!r} is a folder without a readable training checkpoint (looked "
                                 f"for iter_<N>.pt in it and in its checkpoints/ folder); pass a checkpoint file, "
                                 f"or 'auto' to continue the run in out_dir ({self.out_dir}) if it has one")
            return found
        return path, None

    def write(self, state: Dict[str, Any], iteration: int) -> Path:
        """Write ``iter_<iteration>.pt`` durably, then apply retention."""
        path = self.path / f"iter_{iteration:08d}.pt"
        save_checkpoint_file(state, path)
        self.mark_good(path)
        self._retain(path, iteration)
        return path

    def _retain(self, written: Path, iteration: int) -> None:
        """Keep ``written`` and the newest ``keep - 1`` readable checkpoints before it; delete older ones; set aside
        unreadable ones and those with a later iteration (another run's: resume must not pick them over this
        run's)."""
        kept = 1
        for found, path in reversed(checkpoints_in(self.path)):
            if path == written:
                continue
            try:
                if found > iteration:
                    moved = set_aside(path, "superseded")
                    self.log(f"warning: {path.name} is from another run (iteration {found}, this run wrote "
                             f"{written.name}); renamed it {moved.name} so that resume follows this run")
                elif kept >= self.keep:
                    path.unlink(missing_ok=True)
                elif path.resolve() in self._good or is_readable_checkpoint(path):
                    self.mark_good(path)
                    kept += 1
                else:
                    moved = set_aside(path, "unreadable")
                    self.log(f"warning: checkpoint {path.name} cannot be read; renamed it {moved.name} (not "
                             f"counted in keep_checkpoints)")
            except OSError as err:
                self.log(f"warning: could not tidy {path}: {err}")
