"""A run's history: ``log.jsonl``, one JSON record per line (start, train, eval, resume and end events), and the same
records as TensorBoard scalars when asked for.

``log.jsonl`` is one history: a resume keeps the records up to the checkpoint's iteration, drops those of the lost
work (and any line cut short), and adds a ``resume`` event; a run that starts at iteration 0 starts a new log.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Tuple

from ..fileio import atomic_write

__all__ = ["RunLog", "log_up_to"]


def log_up_to(path: Path, iteration: int) -> Tuple[List[str], int]:
    """The lines of a log that describe iterations up to ``iteration`` (no ``end`` event, no line that does not
    parse), and how many were dropped."""
    if not path.is_file():
        return [], 0
    kept: List[str] = []
    dropped = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                keep = (isinstance(record, dict) and record.get("event") != "end" and line.endswith("\n")
                        and int(record.get("iter", 0)) <= iteration)
            except (ValueError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    return kept, dropped


class RunLog:
    """Where a run's records go: nowhere until :meth:`open` (which only the main process calls)."""

    def __init__(self) -> None:
        self._handle: Optional[IO[str]] = None
        self._tb: Any = None

    def open(self, path: Path, iteration: int, tensorboard: Optional[Path] = None) -> int:
        """Open the log at ``path``: a new one at iteration 0; on a resume at ``iteration``, the records up to it
        (rewritten atomically) to append to. Returns how many records were dropped. ``tensorboard``: a folder for
        TensorBoard event files (skipped when tensorboard is not installed)."""
        dropped = 0
        if iteration == 0:
            self._handle = open(path, "w", encoding="utf-8")
        else:
            kept, dropped = log_up_to(path, iteration)
            atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"), fsync=True)
            self._handle = open(path, "a", encoding="utf-8")
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(tensorboard))
            except Exception:  # tensorboard not installed
                self._tb = None
        return dropped

    def write(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (flushed at once, so that a crash loses no line) and its numbers as scalars."""
        if self._handle is not None:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        if self._tb is not None:
            step = record.get("iter", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iter", "time"):
                    self._tb.add_scalar(f"{record.get('event', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
