"""Atomic file writes: content goes to a temporary file in the destination folder, then is renamed into place, so a
failure never leaves a half-written file under the final name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the temp file is removed on failure.

    ``suffix`` is appended to the temp name for writers that look at the extension (e.g. ".onnx"). The file gets
    the usual umask-based permissions (mkstemp alone would leave it 0600).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"destination {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
