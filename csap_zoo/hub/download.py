"""Fetching checkpoint files: Hugging Face Hub, plain URLs or package files; cached, hash-checked, offline-safe.

Sources:
- Package sources (``{"package": "assets/demo/model.safetensors"}``) are files inside the installed package (the
  bundled demo); they are used in place, offline or not, after the same hash check.
- Hugging Face sources go through ``huggingface_hub.hf_hub_download`` at the pinned revision and live in its cache
  (``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply).
- URL sources are cached as ``<cache>/checkpoints/<key>/<filename>``: ``<cache>`` is ``CSAP_ZOO_CACHE`` or
  ``~/.cache/csap_zoo``, ``<key>`` the first 16 hex digits of the sha256 of the URL and the expected hash, and
  ``<filename>`` the URL's last path segment (kept for people reading the cache).
- Offline (``local_files_only=True``, ``CSAP_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), only the cache is used.
- A file downloaded by hand goes in with ``place_from_file`` (``csap-zoo download NAME --from-file FILE``): its sha256
  is checked against the manifest first (a wrong file changes nothing), then it is copied atomically to where
  ``fetch_verified`` reads (``cache_path``): the URL cache entry, or huggingface_hub's snapshot of the pinned
  revision (a blob named by the sha256 and the snapshot's link to it, as huggingface_hub lays them out). Every
  "not in the cache" and every failed-download error names that path and the command.
- Shared with timm: an entry named like a timm pretrained tag (``mscan_tiny.in1k``) whose timm config downloads a
  file of the same name from a URL (no ``hf_hub_id``) is also looked up in torch.hub's checkpoint folder
  (``torch.hub.get_dir()/checkpoints/<filename>``, where ``timm.create_model(..., pretrained=True)`` caches it),
  hash-checked like any cache file; and a verified copy of ours is hard-linked (else copied) there when that name
  is free. So whichever of timm and csap-zoo comes first downloads the file, and the other one reuses it. A file
  there that fails the hash is ignored, never removed (it is torch.hub's).
- Progress: URL downloads show a tqdm bar on stderr when stderr is a terminal, or when asked (``progress=True`` or
  ``CSAP_ZOO_PROGRESS=1``; ``progress=False`` / ``CSAP_ZOO_PROGRESS=0`` turn it off). huggingface_hub shows its own
  for Hub files (``HF_HUB_DISABLE_PROGRESS_BARS`` applies).

What is guaranteed:
- What you load is what was verified. ``fetch_verified`` reads the file once, hashes exactly those bytes against the
  manifest's sha256 (full, or the prefix the file name carries) and returns them; ``create_model`` builds the model
  from those bytes. A file replaced or damaged after the check never reaches a model. This holds for every source
  and on every load, cache hits included. (``fetch_checkpoint`` returns only the path, for tools that need a file.)
- Two manifest entries never share a cache file, even when their URLs end in the same file name: each source (URL
  plus expected hash) has its own folder.
- A URL cache file appears only complete and verified: the download goes to ``.<filename>.<random>.partial`` in the
  same folder, is hashed while it streams, flushed to disk and then renamed over the final name.
- Concurrency: one download per cache entry at a time. The downloading process holds an exclusive ``flock`` on
  ``.<filename>.lock`` next to the file (and on its own ``.partial``); another process that needs the same entry
  waits for it (up to its own download deadline) and then uses the verified file instead of downloading again.
  Reading a complete file takes no lock, so a read-only shared cache works offline. A cached file that fails its hash
  is removed only while holding the entry's lock and only if it is still the very file that was hashed; a process
  never deletes a file another entry or another live process owns, and never touches huggingface_hub's temp files.
- After a crash (even SIGKILL) nothing half-written is ever used: a killed download leaves at most its ``.partial``,
  which the next download of that entry removes: only names exactly of our pattern (``.<filename>.<12 hex
  digits>.partial``) that no live process holds locked; any other file in the cache is never removed.
  The empty ``.lock`` files stay, one per entry; removing them while nothing runs is harmless.
- Files and folders are created with the process umask, like ordinary files (0644 / 0755 under umask 022), so
  caches can be shared by a team.
- Hub files: a cached file that fails its hash is downloaded again once with ``force_download=True`` (online); if
  it still fails, that file (if unchanged) is removed through its snapshot link and the error is raised.

Timeouts (URL sources): every download has an overall deadline, ``CSAP_ZOO_DOWNLOAD_TIMEOUT`` seconds or the
``timeout`` argument; the default is generous, 10 minutes plus the time the file takes at 128 KiB/s (from the
manifest's ``size_bytes``; 1 hour when the entry has none). The server's word never sets it: a Content-Length of
10**13 bytes changes nothing. Each read also times out after ``CSAP_ZOO_READ_TIMEOUT`` seconds without data (default 60). The deadline covers a connection from the moment
it is established (for HTTPS: after the TLS handshake, which only the per-read timeout bounds) through the response
headers and body. The errors name the URL and how much had arrived.

Size (URL sources): a download stops as soon as more bytes arrive than the manifest's ``size_bytes`` (or, for an
entry without one, ``CSAP_ZOO_MAX_DOWNLOAD_BYTES``, default 4 GiB), or when the server announces more; the bytes
stream to the ``.partial`` file, one chunk in memory at a time, and the verified file is read back whole once.
Hub sources use huggingface_hub's own timeouts: ``HF_HUB_ETAG_TIMEOUT`` for the metadata request and
``HF_HUB_DOWNLOAD_TIMEOUT`` per read (10 s each by default); huggingface_hub has no overall deadline, and ours does
not apply to it.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from ..errors import CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError
from ..fileio import (
    atomic_write, clean_stale_partials, contained_path, disk_full_error, fsync_dir, locked_partial, not_a_regular_file,
    same_file, temp_name, try_lock, unlink_if_same,
)
from ..manifest import Checkpoint, HfSource, PackageSource, UrlSource
from ..settings import cache_dir, is_offline, max_download_bytes

__all__ = [
    "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError", "VerifiedFile", "cache_path",
    "default_cache_dir", "fetch_checkpoint", "fetch_verified", "is_offline", "place_from_file", "sha256_of",
    "torch_hub_path", "url_cache_path",
]

_CHUNK = 1 << 20
DEFAULT_READ_TIMEOUT = 60.0
_DEADLINE_BASE = 600.0  # seconds every download gets, on top of the size-based share
_DEADLINE_RATE = 128 * 1024  # bytes per second the default deadline assumes
_DEADLINE_UNKNOWN_SIZE = 3600.0
_LOCK_POLL = 0.05

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class VerifiedFile:
    """A checkpoint file's bytes, exactly those whose hash matched the manifest, and where they were read."""

    path: Path
    data: bytes
    sha256: str


def default_cache_dir() -> Path:
    return cache_dir()


def sha256_of(path: PathLike) -> str:
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


def url_cache_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where a URL checkpoint is cached: ``<cache>/checkpoints/<key>/<filename>`` (see the module docstring)."""
    source = checkpoint.source
    if not isinstance(source, UrlSource):
        raise TypeError(f"checkpoint {checkpoint.name!r} does not have a URL source")
    identity = f"{source.url}\n{checkpoint.sha256 or checkpoint.sha256_prefix or ''}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return contained_path(Path(cache_dir or default_cache_dir()) / "checkpoints", f"{key}/{source.filename}",
                          f"checkpoint {checkpoint.name!r}: URL file name")


def fetch_checkpoint(
        checkpoint: Checkpoint,
        cache_dir: Optional[PathLike] = None,
        local_files_only: Optional[bool] = None,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
) -> Path:
    """Local path of a verified copy of ``checkpoint``'s file, downloading it if needed and allowed.

    To load the weights, use ``fetch_verified``: it hands over the bytes that were checked.
    """
    return fetch_verified(checkpoint, cache_dir, local_files_only, timeout, progress).path


def fetch_verified(
        checkpoint: Checkpoint,
        cache_dir: Optional[PathLike] = None,
        local_files_only: Optional[bool] = None,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
) -> VerifiedFile:
    """The bytes of ``checkpoint``'s file, read once and checked against the manifest hash; downloads if needed
    and allowed. ``timeout``: overall download deadline in seconds (URL sources; default see module docstring).
    ``progress``: a progress bar on stderr for URL downloads (default: when stderr is a terminal)."""
    _require_published(checkpoint)
    if isinstance(checkpoint.source, PackageSource):
        return _fetch_package(checkpoint, checkpoint.source)
    offline = is_offline() if local_files_only is None else local_files_only
    if isinstance(checkpoint.source, HfSource):
        verified = _fetch_hf(checkpoint, checkpoint.source, cache_dir, offline)
        pins = None
    else:
        verified = _fetch_url(checkpoint, url_cache_path(checkpoint, cache_dir), offline, timeout,
                              _show_progress(progress), cache_dir)
        pins = cache_dir
    _check_pin(checkpoint, verified.path, verified.sha256, len(verified.data), pins)
    return verified


# ------------------------------------------------------------------ trust on first use for prefix-only entries
def pin_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the full sha256 of a prefix-only entry is pinned: ``<cache>/pins/<key>.json``, the key naming the
    entry, its source and its prefix."""
    identity = f"{checkpoint.name}\n{checkpoint.source.describe() if checkpoint.source else ''}\n" \
               f"{checkpoint.sha256_prefix}"
    return contained_path(Path(cache_dir or default_cache_dir()) / "pins",
                          hashlib.sha256(identity.encode()).hexdigest()[:16] + ".json")


def _check_pin(checkpoint: Checkpoint, path: Path, digest: str, size: int, cache_dir: Optional[PathLike]) -> None:
    """A manifest entry with only a sha256 prefix (8 hex digits: forgeable): the first verified file pins its full
    sha256 (with one warning); every later load must match that pin exactly."""
    if checkpoint.sha256 or not checkpoint.sha256_prefix:
        return
    pin = pin_path(checkpoint, cache_dir)
    try:
        recorded = json.loads(pin.read_text())["sha256"]
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointIntegrityError(f"the sha256 pin of checkpoint {checkpoint.name!r} ({pin}) cannot be read "
                                       f"({type(err).__name__}); remove it to pin the next verified download "
                                       f"again") from None
    if recorded is None:
        try:
            atomic_write(pin, lambda tmp: Path(tmp).write_text(json.dumps(
                {"name": checkpoint.name, "source": checkpoint.source.describe(), "sha256": digest,
                 "size_bytes": size}, indent=1) + "\n"))
            where = f"now pinned in {pin} and checked on every later load"
        except OSError as err:
            where = f"could not be pinned ({err.strerror}: {pin})"
        warnings.warn(f"checkpoint {checkpoint.name!r} is checked by the {len(checkpoint.sha256_prefix)}-digit "
                      f"sha256 prefix in its manifest entry only; its full sha256 {digest} is {where} "
                      f"(trust on first use)", stacklevel=3)
    elif recorded != digest:
        raise CheckpointIntegrityError(
            f"{path} matches the {len(checkpoint.sha256_prefix)}-digit sha256 prefix of checkpoint "
            f"{checkpoint.name!r} but not the full sha256 pinned at its first download ({recorded}, in {pin}); "
            f"it has sha256 {digest}: the file was replaced, possibly by a forged one, and is not loaded. "
            f"If you trust this file, remove {pin}.")


def _require_published(checkpoint: Checkpoint) -> None:
    if not checkpoint.published or checkpoint.source is None:
        note = f" ({checkpoint.notes})" if checkpoint.notes else ""
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} is not published yet{note}. Use pretrained=False, or start from the "
            f"ImageNet backbone with create_model({checkpoint.architecture!r}, pretrained=True, "
            f"num_classes={checkpoint.num_classes})."
        )


def _show_progress(progress: Optional[bool]) -> bool:
    """Whether URL downloads draw a progress bar: the argument, else ``CSAP_ZOO_PROGRESS``, else whether stderr is
    a terminal."""
    if progress is not None:
        return bool(progress)
    setting = os.environ.get("CSAP_ZOO_PROGRESS", "").strip().lower()
    if setting:
        return setting in ("1", "true", "yes", "on")
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


# ------------------------------------------------------------------ where files go, and files downloaded by hand
def _hf_cache_root(cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE)


def _hf_storage(source: HfSource, cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return _hf_cache_root(cache_dir) / repo_folder_name(repo_id=source.repo_id, repo_type="model")


def cache_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``fetch_verified`` reads ``checkpoint``'s file from, and where ``place_from_file`` puts a copy
    downloaded by hand: the URL cache entry (``url_cache_path``), the snapshot file of the pinned revision in
    huggingface_hub's cache, or the package file."""
    source = checkpoint.source
    if isinstance(source, UrlSource):
        return url_cache_path(checkpoint, cache_dir)
    if isinstance(source, HfSource):
        return contained_path(_hf_storage(source, cache_dir), f"snapshots/{source.revision}/{source.filename}",
                              f"checkpoint {checkpoint.name!r}: HF revision and filename")
    if isinstance(source, PackageSource):
        return source.resolve()
    raise CheckpointUnavailableError(f"checkpoint {checkpoint.name!r} has no source")


def _by_hand_hint(checkpoint: Checkpoint, cache_dir: Optional[PathLike]) -> str:
    """What to do with a copy of the file downloaded by hand (ends the offline / failed-download errors)."""
    try:
        where = cache_path(checkpoint, cache_dir)
    except Exception:  # a message helper must never hide the error it adds to
        return ""
    option = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return (f" With a copy downloaded by hand from {checkpoint.source.describe()}, run `csap-zoo download "
            f"{checkpoint.name} --from-file FILE{option}`: it checks the sha256 and places the file at {where}.")


def _copy_verified(checkpoint: Checkpoint, file: Path, target: Path) -> str:
    """Copy ``file`` to ``target`` through a locked partial, hashing what is copied; the partial becomes
    ``target`` only if that hash matches (the file may have changed since it was checked)."""
    digest = hashlib.sha256()
    with locked_partial(target) as out, open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
        if not _hash_matches(digest.hexdigest(), checkpoint):
            raise CheckpointIntegrityError(f"{file} changed while it was copied (sha256 now {digest.hexdigest()}); "
                                           f"the cache was not changed")
    return digest.hexdigest()


def place_from_file(checkpoint: Checkpoint, file: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """Put a copy of ``checkpoint``'s file downloaded by hand into the cache, where ``fetch_verified`` reads it
    (``cache_path``), so that later loads work offline; returns that path.

    The file's sha256 is checked against the manifest before anything is written: a wrong file raises
    ``CheckpointIntegrityError`` and leaves the cache as it was. The copy is atomic (a locked partial renamed into
    place); the original file is left where it is.
    """
    _require_published(checkpoint)
    file = Path(file)
    source = checkpoint.source
    if isinstance(source, PackageSource):
        raise CheckpointError(f"checkpoint {checkpoint.name!r} ships with the package ({source.resolve()}); there "
                              f"is nothing to place")
    problem = not_a_regular_file(file)
    if problem is not None:
        raise CheckpointError(f"--from-file {file} {problem}; give the checkpoint file downloaded by hand from "
                              f"{source.describe()}")
    digest = sha256_of(file)
    if not _hash_matches(digest, checkpoint):
        raise CheckpointIntegrityError(
            f"{file} has sha256 {digest}, expected {_expected_hash(checkpoint)} for checkpoint {checkpoint.name!r} "
            f"({source.describe()}): it is another file, or damaged. The cache was not changed."
        )
    _check_pin(checkpoint, file, digest, file.stat().st_size, cache_dir if isinstance(source, UrlSource) else None)
    target = cache_path(checkpoint, cache_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create the cache folder {target.parent} for checkpoint {checkpoint.name!r} "
                              f"({err.strerror}); point CSAP_ZOO_CACHE / HF_HUB_CACHE (or --cache-dir) at a "
                              f"writable folder") from None
    if isinstance(source, HfSource):
        _place_hf(checkpoint, file, target, cache_dir)
        return target
    with _entry_lock(target, _default_deadline(checkpoint.size_bytes), checkpoint):
        got = _read(target)
        if got is None or not _hash_matches(got.digest, checkpoint):
            _copy_verified(checkpoint, file, target)
    _share_with_torch_hub(checkpoint, target)
    return target


def _place_hf(checkpoint: Checkpoint, file: Path, pointer: Path, cache_dir: Optional[PathLike]) -> None:
    """huggingface_hub's layout: ``blobs/<sha256>`` (an LFS file's blob is named by its sha256) and the snapshot
    path linking to it; with only a hash prefix known, or without symlinks, the snapshot path holds the file."""
    if checkpoint.sha256 and isinstance(checkpoint.source, HfSource):
        blob = contained_path(_hf_storage(checkpoint.source, cache_dir), f"blobs/{checkpoint.sha256}",
                              f"checkpoint {checkpoint.name!r}: sha256")
        blob.parent.mkdir(parents=True, exist_ok=True)
        got = _read(blob)
        if got is None or not _hash_matches(got.digest, checkpoint):
            _copy_verified(checkpoint, file, blob)
        link = pointer.with_name(temp_name(pointer.name))
        try:
            os.symlink(os.path.relpath(blob, pointer.parent), link)
            os.replace(link, pointer)
            fsync_dir(pointer.parent)
            return
        except OSError:  # no symlinks here: a plain copy in the snapshot
            if os.path.lexists(link):
                os.unlink(link)
    _copy_verified(checkpoint, file, pointer)


# ------------------------------------------------------------------ the file timm caches (torch.hub)
def _url_basename(url: str) -> str:
    """The file name torch.hub caches a URL under (``os.path.basename`` of the path, not unquoted)."""
    return os.path.basename(urlsplit(url).path)


def torch_hub_path(checkpoint: Checkpoint) -> Optional[Path]:
    """Where ``timm.create_model(<checkpoint.name>, pretrained=True)`` caches this same file
    (``torch.hub.get_dir()/checkpoints/<filename>``), or None if timm does not load this entry's file from a URL.
    """
    source = checkpoint.source
    if not isinstance(source, UrlSource):
        return None
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(checkpoint.name, allow_unregistered=False)
    except Exception:  # not a timm model name, or no such tag
        return None
    if cfg is None or not cfg.url or cfg.hf_hub_id or cfg.file or _url_basename(cfg.url) != _url_basename(source.url):
        return None
    import torch.hub

    try:
        return contained_path(Path(torch.hub.get_dir()) / "checkpoints", _url_basename(source.url))
    except ValueError:  # a name torch.hub could not cache either: nothing to share
        return None


def _from_torch_hub(checkpoint: Checkpoint) -> Optional[VerifiedFile]:
    """timm's cached copy of the file, if there is one and it passes the hash check."""
    path = torch_hub_path(checkpoint)
    got = _read(path) if path is not None else None
    if got is None or not _hash_matches(got.digest, checkpoint):
        return None
    return VerifiedFile(path, got.data, got.digest)


def _share_with_torch_hub(checkpoint: Checkpoint, verified: Path, data: Optional[bytes] = None) -> None:
    """Make a verified cache file available where timm looks for it, if that name is free there: a hard link,
    else an atomic copy. Best effort: the fetch never fails because of it."""
    path = torch_hub_path(checkpoint)
    if path is None or os.path.lexists(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(verified, path)  # fails if the name was taken meanwhile: then timm has its own copy
        except FileExistsError:
            return
        except OSError:
            contents = data if data is not None else Path(verified).read_bytes()
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(contents))
    except OSError:
        pass


# ------------------------------------------------------------------ reading and removing verified files
@dataclass(frozen=True)
class _Read:
    data: bytes
    digest: str
    identity: Tuple[int, int]  # (st_dev, st_ino) of the file that was read


def _read(path: Path) -> Optional[_Read]:
    """The file's bytes and their sha256, read through one open handle; None if there is no such file."""
    try:
        handle = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    with handle:
        info = os.fstat(handle.fileno())
        data = handle.read()
    digest = hashlib.sha256()
    digest.update(data)
    return _Read(data, digest.hexdigest(), (info.st_dev, info.st_ino))


# ------------------------------------------------------------------ package files
def _fetch_package(checkpoint: Checkpoint, source: PackageSource) -> VerifiedFile:
    """A file shipped with the package: used in place (never copied or downloaded), hash-checked every time."""
    path = source.resolve()
    got = _read(path) if path.is_file() else None
    if got is None:
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} should ship with the package at {path}, but the file is missing; "
            f"reinstall csap-zoo."
        )
    if not _hash_matches(got.digest, checkpoint):
        raise CheckpointIntegrityError(
            f"bundled checkpoint {checkpoint.name!r} ({path}) has sha256 {got.digest}, expected "
            f"{_expected_hash(checkpoint)}; the installation is damaged or the manifest is stale. Reinstall csap-zoo."
        )
    return VerifiedFile(path, got.data, got.digest)


# ------------------------------------------------------------------ Hugging Face Hub
def _fetch_hf(checkpoint: Checkpoint, source: HfSource, cache_dir: Optional[PathLike], offline: bool) -> VerifiedFile:
    where = source.describe()
    path = _hf_download(checkpoint, source, cache_dir, offline, force=False)
    got = _read(path)
    if got is not None and _hash_matches(got.digest, checkpoint):
        return VerifiedFile(path, got.data, got.digest)
    if not offline:  # a damaged cached copy, or a bad transfer: huggingface_hub downloads it again
        path = _hf_download(checkpoint, source, cache_dir, offline, force=True)
        got = _read(path)
        if got is not None and _hash_matches(got.digest, checkpoint):
            return VerifiedFile(path, got.data, got.digest)
    digest = got.digest if got is not None else "(file vanished)"
    removed = got is not None and _remove_hf_file(path, got.identity)
    fate = ("The file was removed from the cache" if removed
            else "The file was left in the cache (it changed meanwhile, or cannot be removed)")
    again = "retry online" if offline else "retry later"
    raise CheckpointIntegrityError(
        f"checkpoint {checkpoint.name!r} from {where} has sha256 {digest}, expected {_expected_hash(checkpoint)}. "
        f"{fate}; {again}, and report it if it happens again."
    )


def _hf_download(checkpoint: Checkpoint, source: HfSource, cache_dir: Optional[PathLike], offline: bool,
                 force: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    where = source.describe()
    hint = _by_hand_hint(checkpoint, cache_dir)
    try:
        return Path(hf_hub_download(
            source.repo_id, source.filename, revision=source.revision, cache_dir=cache_dir,
            local_files_only=offline, force_download=force,
        ))
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointUnavailableError(
                f"checkpoint {checkpoint.name!r} is not in the local cache and offline mode is on ({where}). "
                f"Download it once while online (e.g. `csap-zoo download {checkpoint.name}`), or point "
                f"HF_HUB_CACHE at a cache that holds it.{hint}"
            ) from None
        raise CheckpointError(
            f"could not download checkpoint {checkpoint.name!r} from {where}: the Hub is unreachable. Check the "
            f"network or HF_ENDPOINT, or work offline from a populated cache (HF_HUB_OFFLINE=1).{hint}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} is missing on the Hub ({where}): {type(err).__name__}. The manifest "
            f"entry may be stale; update csap-zoo or report it."
        ) from None
    except Exception as err:  # network errors, truncated transfers (huggingface_hub removes its own temp file)
        raise CheckpointError(
            f"downloading checkpoint {checkpoint.name!r} from {where} failed ({type(err).__name__}: {err}). "
            f"Nothing was cached; retry.{hint}"
        ) from err


def _remove_hf_file(snapshot_path: Path, identity: Tuple[int, int]) -> bool:
    """Delete a cached Hub file that failed its hash: the blob it points to and its snapshot link, only if the link
    still leads to the file that was read."""
    if not same_file(snapshot_path, identity):
        return False
    blob = snapshot_path.resolve()
    try:
        if blob != snapshot_path:
            snapshot_path.unlink()
        return unlink_if_same(blob, identity)
    except OSError:
        return False


# ------------------------------------------------------------------ plain URLs
def _positive_seconds(variable: str, default: Optional[float]) -> Optional[float]:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise CheckpointError(f"{variable} must be a number of seconds greater than 0, got {text!r}")
    return value


def _default_deadline(size: Optional[int]) -> float:
    return _DEADLINE_BASE + size / _DEADLINE_RATE if size else _DEADLINE_UNKNOWN_SIZE


def _fetch_url(checkpoint: Checkpoint, target: Path, offline: bool, timeout: Optional[float], progress: bool = False,
               cache_dir: Optional[PathLike] = None) -> VerifiedFile:
    source = checkpoint.source
    assert isinstance(source, UrlSource)
    if timeout is not None and not timeout > 0:
        raise CheckpointError(f"timeout must be a number of seconds greater than 0, got {timeout!r}")
    deadline = timeout if timeout is not None else _positive_seconds("CSAP_ZOO_DOWNLOAD_TIMEOUT", None)
    read_timeout = _positive_seconds("CSAP_ZOO_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)

    got = _read(target)
    if got is not None and _hash_matches(got.digest, checkpoint):
        _share_with_torch_hub(checkpoint, target, got.data)
        return VerifiedFile(target, got.data, got.digest)
    shared = _from_torch_hub(checkpoint)
    if shared is not None:
        return shared
    hint = _by_hand_hint(checkpoint, cache_dir)
    if offline:
        if got is None:
            raise CheckpointUnavailableError(
                f"checkpoint {checkpoint.name!r} is not in the local cache ({target}) and offline mode is on. "
                f"Download it once while online (`csap-zoo download {checkpoint.name}`).{hint}"
            )
        removed = _remove_bad_cache_file_offline(target, got)
        fate = "it was removed" if removed else "it was left in place (it changed meanwhile, or cannot be removed)"
        raise CheckpointIntegrityError(
            f"cached file {target} for checkpoint {checkpoint.name!r} has sha256 {got.digest}, expected "
            f"{_expected_hash(checkpoint)}; {fate}. Go online to download it again.{hint}"
        )

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the cache folder {target.parent} for checkpoint {checkpoint.name!r} ({err.strerror}). "
            f"Point CSAP_ZOO_CACHE (or cache_dir) at a writable folder."
        ) from None
    started = time.monotonic()
    wait = deadline if deadline is not None else _default_deadline(checkpoint.size_bytes)
    with _entry_lock(target, wait, checkpoint):
        clean_stale_partials(target)
        got = _read(target)  # another process may have finished the download while this one waited
        if got is not None and _hash_matches(got.digest, checkpoint):
            _share_with_torch_hub(checkpoint, target, got.data)
            return VerifiedFile(target, got.data, got.digest)
        if got is not None:
            unlink_if_same(target, got.identity)
        left = None if deadline is None else max(deadline - (time.monotonic() - started), 0.001)
        try:
            data, digest = _download_verified(checkpoint, source.url, target, left, deadline, read_timeout, progress)
        except CheckpointError as err:
            raise type(err)(f"{err}{hint}") from None
    _share_with_torch_hub(checkpoint, target, data)
    return VerifiedFile(target, data, digest)


def _remove_bad_cache_file_offline(target: Path, got: _Read) -> bool:
    """Remove a cached file that failed its hash, if no process is downloading that entry right now (it will
    replace the file itself) and the file is still the one that was hashed."""
    try:
        fd = os.open(_lock_path(target), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache: leave it
        return False
    try:
        return try_lock(fd) is not False and unlink_if_same(target, got.identity)
    finally:
        os.close(fd)


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def _entry_lock(target: Path, wait: float, checkpoint: Checkpoint) -> Iterator[None]:
    """Hold the cache entry's exclusive lock (waiting up to ``wait`` seconds for another process to release it)."""
    lock = _lock_path(target)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the lock file {lock} for checkpoint {checkpoint.name!r} ({err.strerror}). Point "
            f"CSAP_ZOO_CACHE (or cache_dir) at a writable folder."
        ) from None
    try:
        give_up = time.monotonic() + wait
        while try_lock(fd) is False:
            if time.monotonic() >= give_up:
                raise CheckpointError(
                    f"another process is downloading checkpoint {checkpoint.name!r} into {target.parent} and did "
                    f"not finish within {wait:g} s. Retry when it is done, or allow more time with "
                    f"CSAP_ZOO_DOWNLOAD_TIMEOUT=<seconds>."
                )
            time.sleep(_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


class _ProgressBar:
    """A tqdm bar on stderr for one download, or nothing when ``enabled`` is false (tqdm is imported only then)."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.enabled, self.name, self._bar = enabled, name, None

    def __enter__(self) -> "_ProgressBar":
        return self

    def start(self, total: Optional[int]) -> None:
        if self.enabled and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.name, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


class _Deadline:
    """Shuts down the sockets of a download once its time is up, so that no read (response headers included) can
    outlast it. ``seconds`` may be changed while it runs (the default deadline, once the server announces the size).
    """

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.seconds = seconds
        self.expired = False
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="csap-zoo download deadline", daemon=True)

    def __enter__(self) -> "_Deadline":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shutdown(sock)

    def _watch(self) -> None:
        while True:
            left = self.started + self.seconds - time.monotonic()
            if left <= 0:
                break
            if self._done.wait(min(left, 0.25)):
                return
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:  # the plain socket's shutdown (also under TLS): the blocked read returns at once
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """A urllib opener whose HTTP(S) connections are watched by ``deadline``."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class TlsConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Connection, req)

    context = ssl.create_default_context()

    class TlsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(TlsConnection, req, context=context)

    return urllib.request.build_opener(Handler(), TlsHandler(context=context), _Redirects())


MAX_REDIRECTS = 10


class _RedirectProblem(Exception):
    """A redirect chain that was stopped: a loop, or longer than MAX_REDIRECTS (says which)."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows up to MAX_REDIRECTS redirects and tells a loop (a URL seen before) from a chain that is only long;
    urllib's own check calls both "an infinite loop"."""

    max_repeats = max_redirections = 1 << 30  # ours decide first, in redirect_request

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        chain = getattr(req, "csap_zoo_chain", [req.full_url])
        if newurl in chain:
            raise _RedirectProblem(f"the server redirects in a loop ({' -> '.join(chain + [newurl])})")
        if len(chain) > MAX_REDIRECTS:
            raise _RedirectProblem(f"the server sent more than {MAX_REDIRECTS} redirects in a row (from {chain[0]}, "
                                   f"the last one to {newurl}); a mirror this far away is misconfigured")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.csap_zoo_chain = chain + [newurl]
        return new


def _http_error_message(code: int, reason: str) -> Tuple[type, str]:
    status = f"HTTP {code} {reason}".rstrip()
    if code in (404, 410):
        return CheckpointUnavailableError, (f"the server has no file there ({status}). The manifest entry may be "
                                            f"stale; update csap-zoo or report it.")
    if code == 429 or code >= 500:
        return CheckpointError, (f"the server failed ({status}); this is usually temporary: retry later, and report "
                                 f"it if it persists.")
    return CheckpointError, (f"the server refused the request ({status}). Check proxy and access settings; report "
                             f"it if it persists.")


def _download_verified(checkpoint: Checkpoint, url: str, target: Path, left: Optional[float],
                       deadline_setting: Optional[float], read_timeout: float,
                       show_progress: bool = False) -> Tuple[bytes, str]:
    """Stream ``url`` into a locked partial file next to ``target`` (``csap_zoo.fileio.locked_partial``), hashing
    and keeping the bytes as they arrive; it is renamed only when complete and verified. Returns the verified
    bytes and their sha256. ``show_progress``: draw a tqdm bar on stderr."""
    name = checkpoint.name
    received, expected_size = 0, checkpoint.size_bytes
    # what may arrive and how long it may take come from our side (the manifest's size, else the cap), never from
    # the server's Content-Length
    limit = checkpoint.size_bytes or max_download_bytes()
    seconds = left if left is not None else _default_deadline(checkpoint.size_bytes)
    setting = (f"{deadline_setting:g} s" if deadline_setting is not None
               else f"{seconds:.0f} s (the default for its size)")

    def progress() -> str:
        total = f"{expected_size}" if expected_size else "an unknown number of"
        return f"received {received} of {total} bytes"

    def too_large(size: int, how: str) -> CheckpointError:
        allowed = (f"its manifest size, {limit} bytes" if checkpoint.size_bytes
                   else f"the {limit}-byte cap for entries without a size (CSAP_ZOO_MAX_DOWNLOAD_BYTES)")
        return CheckpointIntegrityError(f"downloading checkpoint {name!r} from {url} was stopped: the server {how} "
                                        f"{size} bytes, more than {allowed}. It is not the manifest's file; nothing "
                                        f"was cached.")

    with locked_partial(target) as out, _Deadline(seconds) as watchdog, _ProgressBar(show_progress, target.name) as bar:
        digest = hashlib.sha256()
        try:
            with _opener(watchdog).open(url, timeout=read_timeout) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.strip().isdigit():
                    announced = int(length)
                    if announced > limit:
                        raise too_large(announced, "announced")
                    expected_size = expected_size or announced
                bar.start(expected_size)
                read = getattr(response, "read1", response.read)
                while True:
                    chunk = read(min(_CHUNK, limit + 1 - received))
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise too_large(received, "sent at least")
                    out.write(chunk)  # streamed to the partial file: memory holds one chunk at a time
                    digest.update(chunk)
                    bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            kind, what = _http_error_message(err.code, err.reason or "")
            err.close()
            raise kind(f"downloading checkpoint {name!r} from {url} failed: {what}") from None
        except _RedirectProblem as err:
            raise CheckpointError(f"downloading checkpoint {name!r} from {url} failed: {err}. Nothing was cached; "
                                  f"report it if it persists.") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
            full = disk_full_error(err, target) if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else None
            if full is not None:
                raise full from None
            if not watchdog.expired:
                if isinstance(getattr(err, "reason", err), (socket.timeout, TimeoutError)):
                    raise CheckpointError(
                        f"downloading checkpoint {name!r} from {url} stopped: no data for {read_timeout:g} s "
                        f"({progress()}); the server stalled. Nothing was cached; retry later, or allow longer "
                        f"pauses with CSAP_ZOO_READ_TIMEOUT=<seconds>."
                    ) from None
                detail = f"; {progress()}" if received else ""
                raise CheckpointError(f"downloading checkpoint {name!r} from {url} failed "
                                      f"({type(err).__name__}: {err}{detail}). Nothing was cached; "
                                      f"retry.") from None
        if watchdog.expired and received != expected_size:
            rate = received / max(time.monotonic() - watchdog.started, 1e-9) / 1024
            raise CheckpointError(
                f"downloading checkpoint {name!r} from {url} did not finish within {setting} and was stopped: "
                f"{progress()} ({rate:.1f} KiB/s). The server is slow or stalled; nothing was cached. Retry "
                f"later, or allow more time with CSAP_ZOO_DOWNLOAD_TIMEOUT=<seconds>."
            )
        if expected_size is not None and received != expected_size:
            raise CheckpointError(f"downloading checkpoint {name!r} from {url} stopped after {received} "
                                  f"of {expected_size} bytes. Nothing was cached; retry.")
        if not _hash_matches(digest.hexdigest(), checkpoint):
            raise CheckpointIntegrityError(
                f"checkpoint {name!r} from {url} has sha256 {digest.hexdigest()}, expected "
                f"{_expected_hash(checkpoint)}. Nothing was cached; retry, and report it if it happens again."
            )
    # the partial is now target (renamed whole, still locked): load exactly the bytes that are there, and check
    # that they are the ones hashed while streaming
    got = _read(target)
    if got is None or got.digest != digest.hexdigest():
        raise CheckpointIntegrityError(f"checkpoint {name!r}: the cache file {target} changed right after its "
                                       f"download was verified; retry.")
    return got.data, got.digest
