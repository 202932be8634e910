"""Switches csap-zoo reads from the environment, at call time (so a test or a script can change them)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["cache_dir", "is_offline"]


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """Whether the environment asks for offline operation: ``CSAP_ZOO_OFFLINE`` or Hugging Face's
    ``HF_HUB_OFFLINE``."""
    return _truthy(os.environ.get("CSAP_ZOO_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    """csap-zoo's cache root: ``CSAP_ZOO_CACHE``, else ``~/.cache/csap_zoo`` (downloads, converted models)."""
    return Path(os.environ.get("CSAP_ZOO_CACHE") or Path.home() / ".cache" / "csap_zoo")
