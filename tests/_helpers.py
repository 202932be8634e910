"""Helpers that test modules of several folders share (the fixtures are in tests/conftest.py).

Tests import this module as ``_helpers``: tests/conftest.py puts the tests folder on ``sys.path``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, Tuple

import pytest
import torch

from _servers import free_loopback_port

REPO = Path(__file__).resolve().parents[1]


class ManyClasses(torch.nn.Module):
    """A per-pixel linear model with 300 classes (labels above 255: 16-bit label PNGs, the ignore index 255 is a
    real prediction)."""

    num_classes, in_chans, min_size = 300, 3, 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.proj = torch.nn.Conv2d(3, 300, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def expect_config_error(load: Callable[[], object], *fragments: object) -> str:
    """Call ``load`` and check that it raises a ConfigError whose message holds every fragment (``str()`` of a path),
    in under one second of this process's CPU time (refused before anything is built; other work on the machine
    does not count). Returns the message."""
    start = time.process_time()
    with pytest.raises(ValueError) as info:
        load()
    elapsed = time.process_time() - start
    message = str(info.value)
    assert type(info.value).__name__ == "ConfigError", f"{type(info.value).__name__}: {message}"
    assert all(str(fragment) in message for fragment in fragments), message
    assert elapsed < 1.0, f"validation took {elapsed:.2f} s of CPU"
    return message


def save_folder_dataset_as_hf(root, out, splits=(("train", "train"), ("val", "validation")),
                              columns=("image", "annotation")) -> None:
    """Write the folder dataset ``root/<folder split>/{images,masks}`` to ``out`` with ``save_to_disk``: a
    DatasetDict of the named splits (``(folder split, split name)`` pairs), the files' bytes in two Image columns."""
    import datasets

    features = datasets.Features({column: datasets.Image() for column in columns})
    tables = {}
    for folder, split in splits:
        files = [sorted((root / folder / kind).iterdir()) for kind in ("images", "masks")]
        tables[split] = datasets.Dataset.from_dict(
            {column: [{"bytes": path.read_bytes(), "path": None} for path in paths]
             for column, paths in zip(columns, files)}, features=features)
    datasets.DatasetDict(tables).save_to_disk(str(out))


def start_torchrun(args: Sequence[str], cwd: Path) -> subprocess.Popen:
    """``torchrun`` with 2 processes on this machine (gloo on loopback, one thread each, a free port) running
    ``args`` (a script, or ``-m module ...``), its output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_loopback_port()}", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def finish_torchrun(proc: subprocess.Popen, timeout: float = 240) -> Tuple[str, str]:
    """Its (stdout, stderr) once it ends; a job still running after ``timeout`` is stopped (torchrun passes
    SIGTERM on to its workers; SIGKILL after 30 s more)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
