"""Switches csap-zoo reads from the environment, at call time (so a test or a script can change them)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_MAX_DOWNLOAD_BYTES", "cache_dir", "is_offline", "max_download_bytes"]

DEFAULT_MAX_DOWNLOAD_BYTES = 4 << 30
"""The most a download of an entry without ``size_bytes`` may bring (4 GiB: the largest segmentor is ~0.2 GB)."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """Whether the environment asks for offline operation: ``CSAP_ZOO_OFFLINE`` or Hugging Face's
    ``HF_HUB_OFFLINE``."""
    return _truthy(os.environ.get("CSAP_ZOO_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    """csap-zoo's cache root: ``CSAP_ZOO_CACHE``, else ``~/.cache/csap_zoo`` (downloads, converted models)."""
    return Path(os.environ.get("CSAP_ZOO_CACHE") or Path.home() / ".cache" / "csap_zoo")


def max_download_bytes() -> int:
    """The most bytes a URL download of a manifest entry without ``size_bytes`` may bring:
    ``CSAP_ZOO_MAX_DOWNLOAD_BYTES``, else :data:`DEFAULT_MAX_DOWNLOAD_BYTES`. An entry with a size never takes
    more than that size."""
    text = os.environ.get("CSAP_ZOO_MAX_DOWNLOAD_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_DOWNLOAD_BYTES
    if not text.isdigit() or int(text) < 1:
        from .errors import CheckpointError

        raise CheckpointError(f"CSAP_ZOO_MAX_DOWNLOAD_BYTES must be a whole number of bytes greater than 0, "
                              f"got {text!r}")
    return int(text)
