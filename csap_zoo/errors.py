"""Every error csap-zoo raises on purpose: one root, :class:`CsapZooError`.

Each class also keeps the builtin base that code written before the root existed catches (``ValueError`` for bad
input, ``RuntimeError`` for a checkpoint that could not be obtained), so ``except ValueError`` keeps working and
``except csap_zoo.CsapZooError`` catches them all.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = [
    "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError", "ConfigError", "ConversionError",
    "CsapZooError", "DatasetError", "DiskFullError", "DistributedError", "HubError", "ImageTooLargeError",
    "ManifestError", "UnsafePathError",
    "UsageError",
]

_MAX_LISTED = 20


class CsapZooError(Exception):
    """Root of the errors csap-zoo raises; the message says what was wrong and what to do."""


class ConfigError(CsapZooError, ValueError):
    """A config value is of the wrong type, out of bounds or unknown; says which file and field."""

    def __init__(self, problem: str, field: Optional[str] = None, source: Optional[str] = None) -> None:
        self.problem, self.field, self.source = problem, field, source
        subject = f"{field} {problem}" if field else problem
        super().__init__(f"{source}: {subject}" if source and field else f"{source} {subject}" if source else subject)

    def located(self, source: Optional[str] = None, prefix: Optional[str] = None) -> "ConfigError":
        """The same error inside field ``prefix`` of file ``source``."""
        field = ".".join(p for p in (prefix, self.field) if p) or None
        error = ConfigError(self.problem, field, source or self.source)
        error.__cause__ = self.__cause__
        return error


class ConversionError(CsapZooError, ValueError):
    """A checkpoint file cannot be read or does not fit the model it is meant for."""


class ManifestError(CsapZooError, ValueError):
    """The manifest file is malformed, or a name is not in it."""


class UnsafePathError(CsapZooError, ValueError):
    """A name that becomes part of a path (a manifest field, a Hub file name) would leave the folder it belongs in:
    ``..``, an absolute path, an empty segment, a backslash or a NUL; or a folder on the way is a link elsewhere."""


class DiskFullError(CsapZooError, OSError):
    """A write failed because the file system holding it has no space (or quota) left; names the path and the free
    space. What was there before the write is unchanged (writes are atomic)."""


class CheckpointError(CsapZooError, RuntimeError):
    """A checkpoint could not be obtained; the message names it and says what to do."""


class CheckpointUnavailableError(CheckpointError):
    """The checkpoint is unpublished, unknown, or not cached while offline."""


class CheckpointIntegrityError(CheckpointError):
    """The file's sha256 does not match the manifest."""


def listing(items: Sequence[object], limit: int = _MAX_LISTED) -> str:
    """One indented line per item, at most ``limit`` of them, then how many more there are."""
    items = list(items)
    lines = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


HUB_LOGIN_ADVICE = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"
"""What a Hub error that needs a token tells the user to do."""


class HubError(CsapZooError, RuntimeError):
    """Talking to the Hugging Face Hub failed (no token, offline, unreachable, refused); says what to do."""


class DatasetError(CsapZooError, ValueError):
    """A dataset has files that cannot be used; the message lists every offending file."""

    def __init__(self, problems: Sequence[str], what: str = "dataset") -> None:
        self.problems = list(problems)
        super().__init__(f"{what} has {len(self.problems)} problem(s); fix them before training:\n"
                         + listing(self.problems))


class ImageTooLargeError(CsapZooError, ValueError):
    """An image has more pixels than the configured limit (checked before decoding)."""


class UsageError(CsapZooError, ValueError):
    """A command-line value that cannot work here (exit status 2, like argparse's own errors)."""


class DistributedError(CsapZooError, RuntimeError):
    """A process of a torchrun job failed, died or stopped answering; names the rank (and the item it failed on),
    and every process of the job stops with it instead of waiting. ``shared``: every process raised this same
    report (so one of them, rank 0, need print it)."""

    def __init__(self, message: str, shared: bool = False) -> None:
        super().__init__(message)
        self.shared = shared
