"""HTTP downloads of checkpoint files: an overall deadline, redirect limits, a size cap and a progress bar.

Timeouts: every download has an overall deadline, ``CSAP_ZOO_DOWNLOAD_TIMEOUT`` seconds or the ``timeout`` argument;
the default is generous, 10 minutes plus the time the file takes at 128 KiB/s (from the manifest's ``size_bytes``;
1 hour when the entry has none). The server's word never sets it: a Content-Length of 10**13 bytes changes nothing.
Each read also times out after ``CSAP_ZOO_READ_TIMEOUT`` seconds without data (default 60). The deadline covers a
connection from the moment it is established (for HTTPS: after the TLS handshake, which only the per-read timeout
bounds) through the response headers and body. The errors name the URL and how much had arrived.

Size: a download stops as soon as more bytes arrive than the manifest's ``size_bytes`` (or, for an entry without
one, ``CSAP_ZOO_MAX_DOWNLOAD_BYTES``, default 4 GiB), or when the server announces more; the bytes stream to the
cache entry's ``.partial`` file (hashed as they arrive), one chunk in memory at a time, and the verified file is read
back whole once.

Redirects: at most :data:`MAX_REDIRECTS` in a row; a loop is told apart from a chain that is only long.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError
from ..fileio import disk_full_error, locked_partial
from ..manifest import Checkpoint
from ..settings import max_download_bytes
from .cache import CHUNK, expected_hash, hash_matches, read_file

__all__ = [
    "DEADLINE_UNKNOWN_SIZE", "Deadline", "MAX_REDIRECTS", "ProgressBar", "RedirectProblem", "default_deadline",
    "http_error_message", "opener", "stream_verified",
]

_DEADLINE_BASE = 600.0  # seconds every download gets, on top of the size-based share
_DEADLINE_RATE = 128 * 1024  # bytes per second the default deadline assumes
DEADLINE_UNKNOWN_SIZE = 3600.0  # the default deadline of an entry without size_bytes


def default_deadline(size: Optional[int]) -> float:
    """The overall deadline of a download of ``size`` bytes (None: unknown) when none is set, in seconds."""
    return _DEADLINE_BASE + size / _DEADLINE_RATE if size else DEADLINE_UNKNOWN_SIZE


class ProgressBar:
    """A tqdm bar on stderr for one download, or nothing when ``enabled`` is false (tqdm is imported only then)."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.enabled, self.name, self._bar = enabled, name, None

    def __enter__(self) -> "ProgressBar":
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


class Deadline:
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

    def __enter__(self) -> "Deadline":
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


def opener(deadline: Deadline) -> urllib.request.OpenerDirector:
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

    return urllib.request.build_opener(Handler(), TlsHandler(context=context), Redirects())


MAX_REDIRECTS = 10


class RedirectProblem(Exception):
    """A redirect chain that was stopped: a loop, or longer than MAX_REDIRECTS (says which)."""


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follows up to MAX_REDIRECTS redirects and tells a loop (a URL seen before) from a chain that is only long;
    urllib's own check calls both "an infinite loop"."""

    max_repeats = max_redirections = 1 << 30  # ours decide first, in redirect_request

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        chain = getattr(req, "csap_zoo_chain", [req.full_url])
        if newurl in chain:
            raise RedirectProblem(f"the server redirects in a loop ({' -> '.join(chain + [newurl])})")
        if len(chain) > MAX_REDIRECTS:
            raise RedirectProblem(f"the server sent more than {MAX_REDIRECTS} redirects in a row (from {chain[0]}, "
                                   f"the last one to {newurl}); a mirror this far away is misconfigured")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.csap_zoo_chain = chain + [newurl]
        return new


def http_error_message(code: int, reason: str) -> Tuple[type, str]:
    """The error class and the words for an HTTP error status: gone (unavailable), temporary, or refused."""
    status = f"HTTP {code} {reason}".rstrip()
    if code in (404, 410):
        return CheckpointUnavailableError, (f"the server has no file there ({status}). The manifest entry may be "
                                            f"stale; update csap-zoo or report it.")
    if code == 429 or code >= 500:
        return CheckpointError, (f"the server failed ({status}); this is usually temporary: retry later, and report "
                                 f"it if it persists.")
    return CheckpointError, (f"the server refused the request ({status}). Check proxy and access settings; report "
                             f"it if it persists.")


def stream_verified(checkpoint: Checkpoint, url: str, target: Path, left: Optional[float],
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
    seconds = left if left is not None else default_deadline(checkpoint.size_bytes)
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

    with locked_partial(target) as out, Deadline(seconds) as watchdog, ProgressBar(show_progress, target.name) as bar:
        digest = hashlib.sha256()
        try:
            with opener(watchdog).open(url, timeout=read_timeout) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.strip().isdigit():
                    announced = int(length)
                    if announced > limit:
                        raise too_large(announced, "announced")
                    expected_size = expected_size or announced
                bar.start(expected_size)
                read = getattr(response, "read1", response.read)
                while True:
                    chunk = read(min(CHUNK, limit + 1 - received))
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise too_large(received, "sent at least")
                    out.write(chunk)  # streamed to the partial file: memory holds one chunk at a time
                    digest.update(chunk)
                    bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            kind, what = http_error_message(err.code, err.reason or "")
            err.close()
            raise kind(f"downloading checkpoint {name!r} from {url} failed: {what}") from None
        except RedirectProblem as err:
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
        if not hash_matches(digest.hexdigest(), checkpoint):
            raise CheckpointIntegrityError(
                f"checkpoint {name!r} from {url} has sha256 {digest.hexdigest()}, expected "
                f"{expected_hash(checkpoint)}. Nothing was cached; retry, and report it if it happens again."
            )
    # the partial is now target (renamed whole, still locked): load exactly the bytes that are there, and check
    # that they are the ones hashed while streaming
    got = read_file(target)
    if got is None or got.digest != digest.hexdigest():
        raise CheckpointIntegrityError(f"checkpoint {name!r}: the cache file {target} changed right after its "
                                       f"download was verified; retry.")
    return got.data, got.digest
