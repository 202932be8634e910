"""Switches csap-zoo reads from the environment, at call time (so a test or a script can change them).

Every ``CSAP_ZOO_*`` variable is read here. torchrun's ``LOCAL_RANK`` / ``WORLD_SIZE`` are read where the process
group starts (``csap_zoo.distributed``): they are torchrun's protocol, not switches of csap-zoo.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import UsageError

__all__ = [
    "DEFAULT_MAX_DOWNLOAD_BYTES", "DEFAULT_READ_TIMEOUT", "MAX_PIXELS_ENV", "PROXY_VARIABLES", "backend_override",
    "cache_dir",
    "download_timeout", "is_offline", "manifest_override", "max_download_bytes", "max_image_pixels",
    "progress_requested", "proxy_configured", "read_timeout",
]

DEFAULT_MAX_DOWNLOAD_BYTES = 4 << 30
"""The most a download of an entry without ``size_bytes`` may bring (4 GiB: the largest segmentor is ~0.2 GB)."""
DEFAULT_READ_TIMEOUT = 60.0
"""Seconds a URL download may go without receiving data."""
MAX_PIXELS_ENV = "CSAP_ZOO_MAX_PIXELS"
"""The variable that sets the image pixel limit (0 or less: no limit)."""
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


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


def _positive_seconds(variable: str, default: Optional[float]) -> Optional[float]:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        from .errors import CheckpointError

        raise CheckpointError(f"{variable} must be a number of seconds greater than 0, got {text!r}")
    return value


def download_timeout() -> Optional[float]:
    """The overall deadline of a URL download in seconds: ``CSAP_ZOO_DOWNLOAD_TIMEOUT``, else None (the default
    for the entry's size applies)."""
    return _positive_seconds("CSAP_ZOO_DOWNLOAD_TIMEOUT", None)


def read_timeout() -> float:
    """Seconds a URL download may go without data: ``CSAP_ZOO_READ_TIMEOUT``, else :data:`DEFAULT_READ_TIMEOUT`."""
    seconds = _positive_seconds("CSAP_ZOO_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)
    assert seconds is not None
    return seconds


def progress_requested() -> Optional[bool]:
    """Whether ``CSAP_ZOO_PROGRESS`` asks for download progress bars (True / False), or None when it is unset."""
    setting = os.environ.get("CSAP_ZOO_PROGRESS", "").strip()
    return _truthy(setting) if setting else None


def proxy_configured() -> bool:
    """Whether an HTTP(S) proxy is set in the environment (then the Hub endpoint is not probed directly)."""
    return any(os.environ.get(name) for name in PROXY_VARIABLES)


def backend_override() -> Optional[str]:
    """What ``backend="auto"`` runs instead of its own pick: ``CSAP_ZOO_BACKEND`` = ``torch`` or ``openvino``
    (unset, empty or ``auto``: no override)."""
    value = os.environ.get("CSAP_ZOO_BACKEND", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("torch", "openvino"):
        raise UsageError(f"CSAP_ZOO_BACKEND={value!r} is not a backend: use torch, openvino or auto")
    return value


def manifest_override() -> Optional[str]:
    """The weights manifest file named by ``CSAP_ZOO_MANIFEST``, or None for the packaged one."""
    return os.environ.get("CSAP_ZOO_MANIFEST") or None


def max_image_pixels() -> Optional[int]:
    """The image pixel limit ``CSAP_ZOO_MAX_PIXELS`` asks for (0 or less: no limit), or None when it is unset."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels (use e.g. 300000000, "
                         f"or 0 for no limit)") from None
