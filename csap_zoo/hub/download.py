"""Fetching checkpoint files: Hugging Face Hub, plain URLs or local paths; cached, hash-checked, offline-safe.

- Package sources (``{"package": "assets/demo/model.safetensors"}``) are files inside the installed package (the
  bundled demo); they are used in place, offline or not, after the same hash check.

- Hugging Face sources go through ``huggingface_hub.hf_hub_download`` at the pinned revision and live in its cache
  (``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply).
- URL sources are cached as ``<cache>/checkpoints/<filename>``, where ``<cache>`` is ``CSAP_ZOO_CACHE`` or
  ``~/.cache/csap_zoo``; a file appears there only once it is complete and verified (temp file + rename).
- Every file is checked against the manifest's sha256 (full, or the prefix the file name carries) each time it is
  resolved, cache hits included; a file that fails is removed from the cache before the error is raised.
- Offline (``local_files_only=True``, ``CSAP_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), only the cache is used.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from .manifest import Checkpoint, HfSource, PackageSource, UrlSource

__all__ = [
    "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError", "default_cache_dir",
    "fetch_checkpoint", "is_offline", "sha256_of",
]

_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be obtained; the message names it and says what to do."""


class CheckpointUnavailableError(CheckpointError):
    """The checkpoint is unpublished, unknown, or not cached while offline."""


class CheckpointIntegrityError(CheckpointError):
    """The file's sha256 does not match the manifest (it has been removed from the cache)."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """Whether the environment asks for offline operation (read at call time)."""
    return _truthy(os.environ.get("CSAP_ZOO_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("CSAP_ZOO_CACHE") or Path.home() / ".cache" / "csap_zoo")


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_matches(digest: str, checkpoint: Checkpoint) -> bool:
    if checkpoint.sha256:
        return digest == checkpoint.sha256
    if checkpoint.sha256_prefix:
        return digest.startswith(checkpoint.sha256_prefix)
    return True


def _expected_hash(checkpoint: Checkpoint) -> str:
    return checkpoint.sha256 or f"{checkpoint.sha256_prefix}..."


def fetch_checkpoint(
        checkpoint: Checkpoint,
        cache_dir: Union[str, Path, None] = None,
        local_files_only: Optional[bool] = None,
) -> Path:
    """Local path of a verified copy of ``checkpoint``'s file, downloading it if needed and allowed."""
    if not checkpoint.published or checkpoint.source is None:
        note = f" ({checkpoint.notes})" if checkpoint.notes else ""
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} is not published yet{note}. Use pretrained=False, or start from the "
            f"ImageNet backbone with create_model({checkpoint.architecture!r}, pretrained=True, "
            f"num_classes={checkpoint.num_classes})."
        )
    if isinstance(checkpoint.source, PackageSource):
        return _fetch_package(checkpoint, checkpoint.source)
    offline = is_offline() if local_files_only is None else local_files_only
    if isinstance(checkpoint.source, HfSource):
        return _fetch_hf(checkpoint, checkpoint.source, cache_dir, offline)
    return _fetch_url(checkpoint, checkpoint.source, Path(cache_dir or default_cache_dir()), offline)


def _fetch_package(checkpoint: Checkpoint, source: PackageSource) -> Path:
    """A file shipped with the package: used in place (never copied or downloaded), hash-checked every time."""
    path = source.resolve()
    if not path.is_file():
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} should ship with the package at {path}, but the file is missing; "
            f"reinstall csap-zoo."
        )
    digest = sha256_of(path)
    if not _hash_matches(digest, checkpoint):
        raise CheckpointIntegrityError(
            f"bundled checkpoint {checkpoint.name!r} ({path}) has sha256 {digest}, expected "
            f"{_expected_hash(checkpoint)}; the installation is damaged or the manifest is stale. Reinstall csap-zoo."
        )
    return path


def _fetch_hf(checkpoint: Checkpoint, source: HfSource, cache_dir: Union[str, Path, None], offline: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    where = source.describe()
    try:
        path = Path(hf_hub_download(
            source.repo_id, source.filename, revision=source.revision, cache_dir=cache_dir,
            local_files_only=offline,
        ))
    except LocalEntryNotFoundError:
        _remove_incomplete_hf_blobs(source, cache_dir)
        if offline:
            raise CheckpointUnavailableError(
                f"checkpoint {checkpoint.name!r} is not in the local cache and offline mode is on ({where}). "
                f"Download it once while online (e.g. `csap-zoo download {checkpoint.name}`), or point "
                f"HF_HUB_CACHE at a cache that holds it."
            ) from None
        raise CheckpointError(
            f"could not download checkpoint {checkpoint.name!r} from {where}: the Hub is unreachable. Check the "
            f"network or HF_ENDPOINT, or work offline from a populated cache (HF_HUB_OFFLINE=1)."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} is missing on the Hub ({where}): {type(err).__name__}. The manifest "
            f"entry may be stale; update csap-zoo or report it."
        ) from None
    except Exception as err:  # network errors, truncated transfers: never leave a partial blob behind
        _remove_incomplete_hf_blobs(source, cache_dir)
        raise CheckpointError(
            f"downloading checkpoint {checkpoint.name!r} from {where} failed ({type(err).__name__}: {err}). "
            f"Nothing was cached; retry."
        ) from err
    digest = sha256_of(path)
    if not _hash_matches(digest, checkpoint):
        _remove_hf_file(path)
        raise CheckpointIntegrityError(
            f"checkpoint {checkpoint.name!r} from {where} has sha256 {digest}, expected "
            f"{_expected_hash(checkpoint)}. The corrupt file was removed from the cache; retry the download, and "
            f"report it if it happens again."
        )
    return path


def _hf_repo_cache(source: HfSource, cache_dir: Union[str, Path, None]) -> Path:
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    return root / f"models--{source.repo_id.replace('/', '--')}"


def _remove_incomplete_hf_blobs(source: HfSource, cache_dir: Union[str, Path, None]) -> None:
    blobs = _hf_repo_cache(source, cache_dir) / "blobs"
    for partial in blobs.glob("*.incomplete") if blobs.is_dir() else []:
        partial.unlink(missing_ok=True)


def _remove_hf_file(snapshot_path: Path) -> None:
    """Delete a cached Hub file: its snapshot link and the blob it points to."""
    blob = snapshot_path.resolve()
    snapshot_path.unlink(missing_ok=True)
    if blob != snapshot_path:
        blob.unlink(missing_ok=True)


def _fetch_url(checkpoint: Checkpoint, source: UrlSource, cache_dir: Path, offline: bool) -> Path:
    target = cache_dir / "checkpoints" / source.filename
    if target.is_file():
        digest = sha256_of(target)
        if _hash_matches(digest, checkpoint):
            return target
        target.unlink()
        if offline:
            raise CheckpointIntegrityError(
                f"cached file {target} for checkpoint {checkpoint.name!r} has sha256 {digest}, expected "
                f"{_expected_hash(checkpoint)}; it was removed. Go online to download it again."
            )
    if offline:
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} is not in the local cache ({target}) and offline mode is on. "
            f"Download it once while online, or place the file there."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _download_verified(checkpoint, source.url, target)
    return target


def _download_verified(checkpoint: Checkpoint, url: str, target: Path) -> None:
    """Stream ``url`` into a temp file next to ``target``, hashing as it goes; rename only when it is complete
    and its hash matches."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                expected_size = response.headers.get("Content-Length")
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as err:
            kind = CheckpointUnavailableError if err.code == 404 else CheckpointError
            raise kind(f"downloading checkpoint {checkpoint.name!r} from {url} failed: HTTP {err.code}. "
                       f"The manifest entry may be stale; update csap-zoo or report it.") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise CheckpointError(f"downloading checkpoint {checkpoint.name!r} from {url} failed "
                                  f"({type(err).__name__}: {err}). Nothing was cached; retry.") from None
        if expected_size is not None and received != int(expected_size):
            raise CheckpointError(f"downloading checkpoint {checkpoint.name!r} from {url} stopped after {received} "
                                  f"of {expected_size} bytes. Nothing was cached; retry.")
        if not _hash_matches(digest.hexdigest(), checkpoint):
            raise CheckpointIntegrityError(
                f"checkpoint {checkpoint.name!r} from {url} has sha256 {digest.hexdigest()}, expected "
                f"{_expected_hash(checkpoint)}. Nothing was cached; retry, and report it if it happens again."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
