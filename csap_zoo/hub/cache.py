"""The cache of downloaded checkpoint files, keyed by source: where each file goes, how it is read and verified,
locked, pinned, shared with torch.hub, and cleaned up.

Layout:
- URL sources are cached as ``<cache>/checkpoints/<key>/<filename>``: ``<cache>`` is ``CSAP_ZOO_CACHE`` or
  ``~/.cache/csap_zoo``, ``<key>`` the first 16 hex digits of the sha256 of the URL and the expected hash, and
  ``<filename>`` the URL's last path segment (kept for people reading the cache). Two manifest entries never share a
  cache file, even when their URLs end in the same file name: each source (URL plus expected hash) has its own folder.
- Hugging Face sources live in huggingface_hub's cache; only a file downloaded by hand is placed there by csap-zoo
  (:func:`place_in_hf_cache`, the one place that writes huggingface_hub's layout).
- Prefix-only entries pin the full sha256 of their first verified file in ``<cache>/pins/<key>.json``.
- torch.hub's checkpoint folder is shared with timm (:func:`torch_hub_path`).

What is guaranteed:
- A URL cache file appears only complete and verified: it is written to ``.<filename>.<random>.partial`` in the same
  folder and renamed over the final name (``csap_zoo.fileio.locked_partial``).
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
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union
from urllib.parse import urlsplit

from .. import settings
from ..errors import CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError
from ..fileio import (
    atomic_write, contained_path, fsync_dir, locked_partial, same_file, temp_name, try_lock, unlink_if_same,
)
from ..manifest import Checkpoint, HfSource, PackageSource, UrlSource

__all__ = [
    "FileRead", "VerifiedFile", "by_hand_hint", "cache_path", "check_pin", "copy_verified", "entry_lock",
    "expected_hash", "from_torch_hub", "hash_matches", "hf_snapshot_path", "lock_path", "pin_path",
    "place_in_hf_cache", "read_file", "remove_hf_file", "remove_unless_locked", "sha256_of", "share_with_torch_hub",
    "torch_hub_path", "url_cache_path",
]

CHUNK = 1 << 20
_LOCK_POLL = 0.05

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class VerifiedFile:
    """A checkpoint file's bytes, exactly those whose hash matched the manifest, and where they were read."""

    path: Path
    data: bytes
    sha256: str


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(digest: str, checkpoint: Checkpoint) -> bool:
    if checkpoint.sha256:
        return digest == checkpoint.sha256
    if checkpoint.sha256_prefix:
        return digest.startswith(checkpoint.sha256_prefix)
    return True


def expected_hash(checkpoint: Checkpoint) -> str:
    return checkpoint.sha256 or f"{checkpoint.sha256_prefix}..."


def url_cache_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where a URL checkpoint is cached: ``<cache>/checkpoints/<key>/<filename>`` (see the module docstring)."""
    source = checkpoint.source
    if not isinstance(source, UrlSource):
        raise TypeError(f"checkpoint {checkpoint.name!r} does not have a URL source")
    identity = f"{source.url}\n{checkpoint.sha256 or checkpoint.sha256_prefix or ''}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return contained_path(Path(cache_dir or settings.cache_dir()) / "checkpoints", f"{key}/{source.filename}",
                          f"checkpoint {checkpoint.name!r}: URL file name")


# ------------------------------------------------------------------ trust on first use for prefix-only entries
def pin_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the full sha256 of a prefix-only entry is pinned: ``<cache>/pins/<key>.json``, the key naming the
    entry, its source and its prefix."""
    identity = f"{checkpoint.name}\n{checkpoint.source.describe() if checkpoint.source else ''}\n" \
               f"{checkpoint.sha256_prefix}"
    return contained_path(Path(cache_dir or settings.cache_dir()) / "pins",
                          hashlib.sha256(identity.encode()).hexdigest()[:16] + ".json")


def check_pin(checkpoint: Checkpoint, path: Path, digest: str, size: int, cache_dir: Optional[PathLike]) -> None:
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


# ------------------------------------------------------------------ where files go, and files downloaded by hand
def cache_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``fetch_verified`` reads ``checkpoint``'s file from, and where ``place_from_file`` puts a copy
    downloaded by hand: the URL cache entry (``url_cache_path``), the snapshot file of the pinned revision in
    huggingface_hub's cache (``hf_snapshot_path``), or the package file."""
    source = checkpoint.source
    if isinstance(source, UrlSource):
        return url_cache_path(checkpoint, cache_dir)
    if isinstance(source, HfSource):
        return hf_snapshot_path(checkpoint, cache_dir)
    if isinstance(source, PackageSource):
        return source.resolve()
    raise CheckpointUnavailableError(f"checkpoint {checkpoint.name!r} has no source")


def by_hand_hint(checkpoint: Checkpoint, cache_dir: Optional[PathLike]) -> str:
    """What to do with a copy of the file downloaded by hand (ends the offline / failed-download errors)."""
    try:
        where = cache_path(checkpoint, cache_dir)
    except Exception:  # a message helper must never hide the error it adds to
        return ""
    option = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return (f" With a copy downloaded by hand from {checkpoint.source.describe()}, run `csap-zoo download "
            f"{checkpoint.name} --from-file FILE{option}`: it checks the sha256 and places the file at {where}.")


def copy_verified(checkpoint: Checkpoint, file: Path, target: Path) -> str:
    """Copy ``file`` to ``target`` through a locked partial, hashing what is copied; the partial becomes
    ``target`` only if that hash matches (the file may have changed since it was checked)."""
    digest = hashlib.sha256()
    with locked_partial(target) as out, open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
        if not hash_matches(digest.hexdigest(), checkpoint):
            raise CheckpointIntegrityError(f"{file} changed while it was copied (sha256 now {digest.hexdigest()}); "
                                           f"the cache was not changed")
    return digest.hexdigest()


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


def from_torch_hub(checkpoint: Checkpoint) -> Optional[VerifiedFile]:
    """timm's cached copy of the file, if there is one and it passes the hash check."""
    path = torch_hub_path(checkpoint)
    got = read_file(path) if path is not None else None
    if got is None or not hash_matches(got.digest, checkpoint):
        return None
    return VerifiedFile(path, got.data, got.digest)


def share_with_torch_hub(checkpoint: Checkpoint, verified: Path, data: Optional[bytes] = None) -> None:
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


# ------------------------------------------------------------------ reading a file once, with its hash
@dataclass(frozen=True)
class FileRead:
    """A file's bytes as read through one handle, their sha256 and which file (device, inode) they came from."""

    data: bytes
    digest: str
    identity: Tuple[int, int]  # (st_dev, st_ino) of the file that was read


def read_file(path: Path) -> Optional[FileRead]:
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
    return FileRead(data, digest.hexdigest(), (info.st_dev, info.st_ino))


# ------------------------------------------------------------------ removing files that failed their hash, locks
def remove_unless_locked(target: Path, got: FileRead) -> bool:
    """Remove a cached file that failed its hash, if no process is downloading that entry right now (it will
    replace the file itself) and the file is still the one that was hashed."""
    try:
        fd = os.open(lock_path(target), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache: leave it
        return False
    try:
        return try_lock(fd) is not False and unlink_if_same(target, got.identity)
    finally:
        os.close(fd)


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def entry_lock(target: Path, wait: float, checkpoint: Checkpoint) -> Iterator[None]:
    """Hold the cache entry's exclusive lock (waiting up to ``wait`` seconds for another process to release it)."""
    lock = lock_path(target)
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


# ------------------------------------------------------------------ huggingface_hub's cache
# huggingface_hub owns this layout: csap-zoo reads Hub files only through hf_hub_download (csap_zoo.hf_access). The
# three functions below are what it has no public API for: the path of a file not yet cached (try_to_load_from_cache
# answers only for cached files), placing a file the user downloaded by hand, and removing one file that failed its
# hash (scan_cache_dir's deletions remove whole revisions).
def _hf_repo_folder(source: HfSource, cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=source.repo_id, repo_type="model")


def hf_snapshot_path(checkpoint: Checkpoint, cache_dir: Optional[PathLike] = None) -> Path:
    """The path ``hf_hub_download`` returns for ``checkpoint``'s file at its pinned revision (a commit sha):
    ``<repo folder>/snapshots/<revision>/<filename>``, cached or not."""
    source = checkpoint.source
    if not isinstance(source, HfSource):
        raise TypeError(f"checkpoint {checkpoint.name!r} does not have a Hugging Face source")
    return contained_path(_hf_repo_folder(source, cache_dir), f"snapshots/{source.revision}/{source.filename}",
                          f"checkpoint {checkpoint.name!r}: HF revision and filename")


def place_in_hf_cache(checkpoint: Checkpoint, file: Path, cache_dir: Optional[PathLike]) -> Path:
    """Put a verified copy of a file downloaded by hand where ``hf_hub_download(..., local_files_only=True)``
    finds it, and return that path.

    huggingface_hub downloads files itself and offers no call that adopts a file from elsewhere, so this writes
    its layout: the blob ``blobs/<sha256>`` (an LFS file's blob is named by its sha256) and the snapshot path as a
    relative link to it; with only a hash prefix known, or without symlinks, the snapshot path holds the file.
    """
    pointer = hf_snapshot_path(checkpoint, cache_dir)
    if checkpoint.sha256:
        assert isinstance(checkpoint.source, HfSource)
        blob = contained_path(_hf_repo_folder(checkpoint.source, cache_dir), f"blobs/{checkpoint.sha256}",
                              f"checkpoint {checkpoint.name!r}: sha256")
        blob.parent.mkdir(parents=True, exist_ok=True)
        got = read_file(blob)
        if got is None or not hash_matches(got.digest, checkpoint):
            copy_verified(checkpoint, file, blob)
        link = pointer.with_name(temp_name(pointer.name))
        try:
            os.symlink(os.path.relpath(blob, pointer.parent), link)
            os.replace(link, pointer)
            fsync_dir(pointer.parent)
            return pointer
        except OSError:  # no symlinks here: a plain copy in the snapshot
            if os.path.lexists(link):
                os.unlink(link)
    copy_verified(checkpoint, file, pointer)
    return pointer


def remove_hf_file(snapshot_path: Path, identity: Tuple[int, int]) -> bool:
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
