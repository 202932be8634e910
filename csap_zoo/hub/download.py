"""Fetching checkpoint files: which source serves a manifest entry (Hugging Face Hub, a plain URL or a package
file), cached, hash-checked and offline-safe.

Sources:
- Package sources (``{"package": "assets/demo/model.safetensors"}``) are files inside the installed package (the
  bundled demo); they are used in place, offline or not, after the same hash check.
- Hugging Face sources go through ``huggingface_hub.hf_hub_download`` (``csap_zoo.hf_access.hf_download``) at the
  pinned revision and live in its cache (``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply). A cached
  file that fails its hash is downloaded again once with ``force_download=True`` (online); if it still fails, that
  file (if unchanged) is removed through its snapshot link and the error is raised. huggingface_hub's own timeouts
  apply (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``); it has no overall deadline, and ours does not apply.
- URL sources are downloaded over HTTP (``csap_zoo.hub.http``: deadlines, size caps, redirects, progress) into
  csap-zoo's own cache (``csap_zoo.hub.cache``: layout, locks, partial files, pins).
- Offline (``local_files_only=True``, ``CSAP_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), only the cache is used.
- A file downloaded by hand goes in with ``place_from_file`` (``csap-zoo download NAME --from-file FILE``): its sha256
  is checked against the manifest first (a wrong file changes nothing), then it is copied atomically to where
  ``fetch_verified`` reads (``csap_zoo.hub.cache.cache_path``): the URL cache entry, or huggingface_hub's snapshot of
  the pinned revision. Every "not in the cache" and every failed-download error names that path and the command.
- Shared with timm: an entry named like a timm pretrained tag (``mscan_tiny.in1k``) whose timm config downloads a
  file of the same name from a URL (no ``hf_hub_id``) is also looked up in torch.hub's checkpoint folder
  (``torch.hub.get_dir()/checkpoints/<filename>``, where ``timm.create_model(..., pretrained=True)`` caches it),
  hash-checked like any cache file; and a verified copy of ours is hard-linked (else copied) there when that name
  is free. So whichever of timm and csap-zoo comes first downloads the file, and the other one reuses it. A file
  there that fails the hash is ignored, never removed (it is torch.hub's).
- Progress: URL downloads show a tqdm bar on stderr when stderr is a terminal, or when asked (``progress=True`` or
  ``CSAP_ZOO_PROGRESS=1``; ``progress=False`` / ``CSAP_ZOO_PROGRESS=0`` turn it off). huggingface_hub shows its own
  for Hub files (``HF_HUB_DISABLE_PROGRESS_BARS`` applies).

What you load is what was verified: ``fetch_verified`` reads the file once, hashes exactly those bytes against the
manifest's sha256 (full, or the prefix the file name carries) and returns them; ``create_model`` builds the model
from those bytes. A file replaced or damaged after the check never reaches a model. This holds for every source and
on every load, cache hits included. (``fetch_checkpoint`` returns only the path, for tools that need a file.)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional, Union

from ..errors import CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError
from ..fileio import clean_stale_partials, not_a_regular_file, unlink_if_same
from ..hf_access import hf_download
from ..manifest import Checkpoint, HfSource, PackageSource, UrlSource
from ..settings import download_timeout, is_offline, progress_requested, read_timeout
from .cache import (
    VerifiedFile, by_hand_hint, cache_path, check_pin, copy_verified, entry_lock, expected_hash, from_torch_hub,
    hash_matches, place_in_hf_cache, read_file, remove_hf_file, remove_unless_locked, sha256_of, share_with_torch_hub,
    url_cache_path,
)
from .http import default_deadline, stream_verified

__all__ = ["fetch_checkpoint", "fetch_verified", "place_from_file"]

PathLike = Union[str, os.PathLike]


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
    and allowed. ``timeout``: overall download deadline in seconds (URL sources; default see
    ``csap_zoo.hub.http``). ``progress``: a progress bar on stderr for URL downloads (default: when stderr is a
    terminal)."""
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
    check_pin(checkpoint, verified.path, verified.sha256, len(verified.data), pins)
    return verified


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
    if not hash_matches(digest, checkpoint):
        raise CheckpointIntegrityError(
            f"{file} has sha256 {digest}, expected {expected_hash(checkpoint)} for checkpoint {checkpoint.name!r} "
            f"({source.describe()}): it is another file, or damaged. The cache was not changed."
        )
    check_pin(checkpoint, file, digest, file.stat().st_size, cache_dir if isinstance(source, UrlSource) else None)
    target = cache_path(checkpoint, cache_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create the cache folder {target.parent} for checkpoint {checkpoint.name!r} "
                              f"({err.strerror}); point CSAP_ZOO_CACHE / HF_HUB_CACHE (or --cache-dir) at a "
                              f"writable folder") from None
    if isinstance(source, HfSource):
        return place_in_hf_cache(checkpoint, file, cache_dir)
    with entry_lock(target, default_deadline(checkpoint.size_bytes), checkpoint):
        got = read_file(target)
        if got is None or not hash_matches(got.digest, checkpoint):
            copy_verified(checkpoint, file, target)
    share_with_torch_hub(checkpoint, target)
    return target


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
    requested = progress_requested()
    if requested is not None:
        return requested
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


# ------------------------------------------------------------------ package files
def _fetch_package(checkpoint: Checkpoint, source: PackageSource) -> VerifiedFile:
    """A file shipped with the package: used in place (never copied or downloaded), hash-checked every time."""
    path = source.resolve()
    got = read_file(path) if path.is_file() else None
    if got is None:
        raise CheckpointUnavailableError(
            f"checkpoint {checkpoint.name!r} should ship with the package at {path}, but the file is missing; "
            f"reinstall csap-zoo."
        )
    if not hash_matches(got.digest, checkpoint):
        raise CheckpointIntegrityError(
            f"bundled checkpoint {checkpoint.name!r} ({path}) has sha256 {got.digest}, expected "
            f"{expected_hash(checkpoint)}; the installation is damaged or the manifest is stale. Reinstall csap-zoo."
        )
    return VerifiedFile(path, got.data, got.digest)


# ------------------------------------------------------------------ Hugging Face Hub
def _fetch_hf(checkpoint: Checkpoint, source: HfSource, cache_dir: Optional[PathLike], offline: bool) -> VerifiedFile:
    where = source.describe()
    path = _hf_download(checkpoint, source, cache_dir, offline, force=False)
    got = read_file(path)
    if got is not None and hash_matches(got.digest, checkpoint):
        return VerifiedFile(path, got.data, got.digest)
    if not offline:  # a damaged cached copy, or a bad transfer: huggingface_hub downloads it again
        path = _hf_download(checkpoint, source, cache_dir, offline, force=True)
        got = read_file(path)
        if got is not None and hash_matches(got.digest, checkpoint):
            return VerifiedFile(path, got.data, got.digest)
    digest = got.digest if got is not None else "(file vanished)"
    removed = got is not None and remove_hf_file(path, got.identity)
    fate = ("The file was removed from the cache" if removed
            else "The file was left in the cache (it changed meanwhile, or cannot be removed)")
    again = "retry online" if offline else "retry later"
    raise CheckpointIntegrityError(
        f"checkpoint {checkpoint.name!r} from {where} has sha256 {digest}, expected {expected_hash(checkpoint)}. "
        f"{fate}; {again}, and report it if it happens again."
    )


def _hf_download(checkpoint: Checkpoint, source: HfSource, cache_dir: Optional[PathLike], offline: bool,
                 force: bool) -> Path:
    return hf_download(
        source.repo_id, source.filename, revision=source.revision, cache_dir=cache_dir, offline=offline,
        force=force, subject=f"checkpoint {checkpoint.name!r}", where=source.describe(),
        offline_advice=f"Download it once while online (e.g. `csap-zoo download {checkpoint.name}`), or point "
                       f"HF_HUB_CACHE at a cache that holds it.",
        missing_advice="The manifest entry may be stale; update csap-zoo or report it.",
        hint=by_hand_hint(checkpoint, cache_dir),
    )


# ------------------------------------------------------------------ plain URLs
def _fetch_url(checkpoint: Checkpoint, target: Path, offline: bool, timeout: Optional[float], progress: bool = False,
               cache_dir: Optional[PathLike] = None) -> VerifiedFile:
    source = checkpoint.source
    assert isinstance(source, UrlSource)
    if timeout is not None and not timeout > 0:
        raise CheckpointError(f"timeout must be a number of seconds greater than 0, got {timeout!r}")
    deadline = timeout if timeout is not None else download_timeout()
    pause = read_timeout()

    got = read_file(target)
    if got is not None and hash_matches(got.digest, checkpoint):
        share_with_torch_hub(checkpoint, target, got.data)
        return VerifiedFile(target, got.data, got.digest)
    shared = from_torch_hub(checkpoint)
    if shared is not None:
        return shared
    hint = by_hand_hint(checkpoint, cache_dir)
    if offline:
        if got is None:
            raise CheckpointUnavailableError(
                f"checkpoint {checkpoint.name!r} is not in the local cache ({target}) and offline mode is on. "
                f"Download it once while online (`csap-zoo download {checkpoint.name}`).{hint}"
            )
        removed = remove_unless_locked(target, got)
        fate = "it was removed" if removed else "it was left in place (it changed meanwhile, or cannot be removed)"
        raise CheckpointIntegrityError(
            f"cached file {target} for checkpoint {checkpoint.name!r} has sha256 {got.digest}, expected "
            f"{expected_hash(checkpoint)}; {fate}. Go online to download it again.{hint}"
        )

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the cache folder {target.parent} for checkpoint {checkpoint.name!r} ({err.strerror}). "
            f"Point CSAP_ZOO_CACHE (or cache_dir) at a writable folder."
        ) from None
    started = time.monotonic()
    wait = deadline if deadline is not None else default_deadline(checkpoint.size_bytes)
    with entry_lock(target, wait, checkpoint):
        clean_stale_partials(target)
        got = read_file(target)  # another process may have finished the download while this one waited
        if got is not None and hash_matches(got.digest, checkpoint):
            share_with_torch_hub(checkpoint, target, got.data)
            return VerifiedFile(target, got.data, got.digest)
        if got is not None:
            unlink_if_same(target, got.identity)
        left = None if deadline is None else max(deadline - (time.monotonic() - started), 0.001)
        try:
            data, digest = stream_verified(checkpoint, source.url, target, left, deadline, pause, progress)
        except CheckpointError as err:
            raise type(err)(f"{err}{hint}") from None
    share_with_torch_hub(checkpoint, target, data)
    return VerifiedFile(target, data, digest)
