"""Loopback HTTP servers for the tests, in one place (the fixtures in tests/conftest.py are thin wrappers).

* :class:`FakeHub` -- speaks enough of the Hugging Face Hub file protocol (``HEAD``/``GET
  /{repo_id}/resolve/{revision}/{filename}``) for the real ``huggingface_hub.hf_hub_download`` to work against it.
* :class:`UrlServer` -- a plain HTTP file server for ``torch.hub``/``urllib`` style URL downloads.
* :func:`point_hf_hub_at` -- points ``huggingface_hub`` at a :class:`FakeHub` with an isolated cache (env vars *and*
  the import-time ``constants``); :func:`no_proxies` -- lets clients reach loopback directly.
* :func:`free_loopback_port` -- a loopback port nothing listens on (for child processes, refused connections).

Both servers can ``corrupt`` a file (serve other bytes than announced) and ``truncate`` it (announce the full
``Content-Length`` and close the connection early). ``UrlServer`` can also ``throttle`` a file (send it in small steps
with a pause after each, optionally after a pause before the headers: a slow or dripping server) and ``fail`` it
(answer an HTTP error status).

Tests import this module as ``_servers``: tests/conftest.py puts the tests folder on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit


def free_loopback_port() -> int:
    """A loopback TCP port that nothing listens on right now (connections to it are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------------
# Shared HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class RequestRecord(NamedTuple):
    method: str
    path: str  # raw request target as received (percent-encoded, query string included)
    headers: dict[str, str]


@dataclass
class _Truncation:
    n: int  # absolute byte offset in the file after which nothing more is sent
    times: int | None  # GET responses left to truncate; None = forever


@dataclass
class _Throttle:
    step: int  # bytes sent per step
    delay: float  # seconds of silence after each step
    header_delay: float = 0.0  # seconds of silence before the response headers


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), i.e. a (possibly slow / networked) reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class _Handler(BaseHTTPRequestHandler):
    """Base handler: logs every request on the owning fixture object, sends files with Range + truncation."""

    protocol_version = "HTTP/1.0"  # one request per connection: simple, and closing == end of response
    timeout = 10
    owner: "_ServerBase"  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    def _record(self) -> None:
        self.owner._record(RequestRecord(self.command, self.path, {k: v for k, v in self.headers.items()}))

    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        self.owner._dispatch(self, head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        self.owner._dispatch(self, head=False)

    def _other(self) -> None:
        self._record()
        self.send_json(405, {"error": f"method {self.command} not supported"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

    # -- helpers -----------------------------------------------------------------------------------------------------

    def send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None, head: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_content(
        self,
        *,
        announced_size: int,
        content: bytes,
        headers: dict[str, str],
        head: bool,
        truncation: _Truncation | None,
        consume_truncation,
        throttle=None,
    ) -> None:
        """HEAD: announce ``announced_size``. GET: send ``content`` (honouring a single ``Range``), cut at
        ``truncation.n`` if set. ``throttle``: a callable returning the current ``_Throttle`` or None (read again
        at every step, so healing a file speeds up a response already under way)."""
        current = throttle() if throttle is not None else None
        if current is not None and current.header_delay and not head:
            if self.owner._stopping.wait(current.header_delay):
                return
        if head:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(announced_size))
            self.end_headers()
            return

        total = len(content)
        start, end = 0, total - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            m = _RANGE_RE.match(range_header)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else total - 1
                else:  # suffix range: last N bytes
                    start = max(total - int(m.group(2)), 0)
                    end = total - 1
                end = min(end, total - 1)
                if start >= total or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            # malformed / multi-range: ignore the header, answer 200 with everything (as servers may)
        body = content[start : end + 1] if total else b""
        cut = None
        if truncation is not None and start + len(body) > truncation.n:
            cut = max(truncation.n - start, 0)
            consume_truncation()

        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None and throttle is not None:
            self._send_throttled(body, throttle)
            return
        if cut is None:
            self.wfile.write(body)
            return
        # Truncated: full Content-Length announced, only `cut` bytes sent, then the connection is closed.
        if cut:
            self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass


    def _send_throttled(self, body: bytes, throttle) -> None:
        """Send ``body`` in steps while ``throttle()`` says so, the rest at once; stop quietly when the client
        goes away or the server closes."""
        sent = 0
        try:
            while sent < len(body):
                current = throttle()
                if current is None:
                    self.wfile.write(body[sent:])
                    return
                self.wfile.write(body[sent : sent + current.step])
                self.wfile.flush()
                sent += current.step
                pause_until = time.monotonic() + current.delay
                while sent < len(body) and throttle() == current and time.monotonic() < pause_until:
                    if self.owner._stopping.wait(min(0.05, max(pause_until - time.monotonic(), 0))):
                        self.close_connection = True
                        return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _ServerBase:
    """Owns a ThreadingHTTPServer on 127.0.0.1:<random port> running in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._stopping = threading.Event()  # set by close(): throttled responses stop sending
        self._log: list[RequestRecord] = []
        handler = type(f"{type(self).__name__}Handler", (_Handler,), {"owner": self})
        self._httpd = _LoopbackServer(("127.0.0.1", 0), handler)
        self.port: int = self._httpd.server_address[1]
        self.endpoint: str = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=type(self).__name__
        )
        self._thread.start()

    # -- request log -------------------------------------------------------------------------------------------------

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._log.append(rec)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Snapshot of ``(method, path)`` for every request received so far (path as sent, percent-encoded)."""
        with self._lock:
            return [(r.method, r.path) for r in self._log]

    @property
    def log(self) -> list[RequestRecord]:
        """Like ``requests`` but with the request headers (``RequestRecord(method, path, headers)``)."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def close(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _dispatch(self, handler: _Handler, head: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _send_text(handler: BaseHTTPRequestHandler, status: int, text: str, head: bool,
               reason: str | None = None) -> None:
    """A short text/plain response (the body left out for HEAD)."""
    body = text.encode()
    handler.send_response(status, reason)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


def _flip(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data) if data else b"\x00"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Fake Hugging Face Hub
# --------------------------------------------------------------------------------------------------------------------

_REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class _HubFile:
    data: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        # LFS files: sha256 of the content (what the Hub sends as X-Linked-Etag). Regular git files: git blob sha1.
        return hashlib.sha256(self.data).hexdigest() if self.lfs else _git_blob_sha1(self.data)


@dataclass
class _HubRepo:
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    commits: dict[str, dict[str, _HubFile]] = field(default_factory=dict)  # sha -> {filename: file}
    n_commits: int = 0


class FakeHub(_ServerBase):
    """Loopback server for the HF Hub file protocol (what ``hf_hub_download`` needs).

    ``HEAD``/``GET /[datasets/|spaces/]{repo_id}/resolve/{revision}/{filename}`` where ``revision`` is a branch name or
    a 40-hex commit sha. Found: 200 with ``X-Repo-Commit``, ``ETag`` (quoted), ``Content-Length``, ``Accept-Ranges``;
    for LFS-style files (default) also ``X-Linked-Etag`` (quoted sha256) and ``X-Linked-Size``. GET honours
    ``Range: bytes=a-[b]`` (206 + ``Content-Range``; 416 when unsatisfiable).
    Errors are 404 + JSON body ``{"error": ...}`` + ``X-Error-Code``: ``RepoNotFound`` (unknown repo),
    ``RevisionNotFound`` (unknown branch/sha), ``EntryNotFound`` (unknown file; also carries ``X-Repo-Commit`` like the
    real Hub, which makes the client cache the non-existence under ``.no_exist/``). Any other path: 404 JSON, no code.
    """

    # -- content -----------------------------------------------------------------------------------------------------

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _HubRepo] = {}
        self._corrupt: dict[tuple[str, str, str], bytes | None] = {}
        self._truncate: dict[tuple[str, str, str], _Truncation] = {}
        super().__init__()

    @staticmethod
    def _fake_sha(repo_type: str, repo_id: str, revision: str, n: int = 0) -> str:
        return hashlib.sha1(f"{repo_type}:{repo_id}@{revision}#{n}".encode()).hexdigest()

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        revision: str = "main",
        *,
        repo_type: str = "model",
        lfs: bool = True,
    ) -> str:
        """Serve ``data`` as ``filename`` of ``repo_id`` at ``revision``; returns the commit sha.

        ``revision`` is a branch name (the commit sha is deterministic: sha1 of repo_type/repo_id/revision, until
        ``new_commit`` moves the branch) or a 40-hex sha (used as the commit itself). The file is served under the
        branch name and under the commit sha. ``lfs=True``: ETag = sha256(data) (plus X-Linked-Etag/-Size), so the
        cache blob is named by the sha256; ``lfs=False``: ETag = git blob sha1, no X-Linked-* headers.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("data must be bytes")
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _HubRepo())
            if _HEX40.match(revision):
                sha = revision
            else:
                sha = repo.branches.get(revision)
                if sha is None:
                    sha = self._fake_sha(repo_type, repo_id, revision)
                    repo.branches[revision] = sha
            repo.commits.setdefault(sha, {})[filename] = _HubFile(bytes(data), lfs)
            return sha

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        with self._lock:
            return self._repos[(repo_type, repo_id)].branches[revision]

    def new_commit(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Move branch ``revision`` to a new commit holding a copy of its current files; returns the new sha
        (later ``add_file(..., revision)`` calls add to that new commit). Simulates "upstream pushed"."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            old = repo.branches[revision]
            repo.n_commits += 1
            sha = self._fake_sha(repo_type, repo_id, revision, repo.n_commits)
            repo.commits[sha] = dict(repo.commits[old])
            repo.branches[revision] = sha
            return sha

    def url(self, repo_id: str, filename: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The resolve URL hf_hub_download requests (same quoting as ``hf_hub_url``)."""
        return (
            f"{self.endpoint}/{_REPO_TYPE_PREFIX[repo_type]}{repo_id}/resolve/"
            f"{quote(revision, safe='')}/{quote(filename)}"
        )

    def path(self, repo_id: str, filename: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Path part of ``url(...)`` -- what appears in ``requests``."""
        return self.url(repo_id, filename, revision, repo_type=repo_type)[len(self.endpoint) :]

    # -- faults ------------------------------------------------------------------------------------------------------

    def corrupt(self, repo_id: str, filename: str, data: bytes | None = None, *, repo_type: str = "model") -> None:
        """GET serves other bytes than announced (HEAD still announces the original ETag/X-Linked-Etag/size).

        Default replacement: every byte XOR 0xFF -- same length, so only a content hash check could notice.
        Pass ``data`` for specific bytes (a different length also changes the GET Content-Length). Applies to every
        revision of the file."""
        with self._lock:
            self._corrupt[(repo_type, repo_id, filename)] = None if data is None else bytes(data)

    def truncate(
        self, repo_id: str, filename: str, n: int, *, times: int | None = None, repo_type: str = "model"
    ) -> None:
        """GET announces the full Content-Length but the server closes the connection once byte offset ``n`` of the
        file is reached (a Range request starting at/after ``n`` gets headers and then nothing).

        ``times=None``: every GET is cut (the file can never be fully fetched). ``times=k``: only the next ``k`` GETs
        that would cross offset ``n`` are cut, later ones are served whole (lets a resume with Range succeed)."""
        with self._lock:
            self._truncate[(repo_type, repo_id, filename)] = _Truncation(int(n), times)

    def heal(self, repo_id: str, filename: str, *, repo_type: str = "model") -> None:
        """Undo ``corrupt`` and ``truncate`` for this file."""
        with self._lock:
            self._corrupt.pop((repo_type, repo_id, filename), None)
            self._truncate.pop((repo_type, repo_id, filename), None)

    # -- protocol ----------------------------------------------------------------------------------------------------

    def _parse(self, raw_path: str) -> tuple[str, str, str, str] | None:
        path = urlsplit(raw_path).path
        left, sep, right = path.partition("/resolve/")
        if not sep:
            return None
        left = left.lstrip("/")
        repo_type = "model"
        for rtype, prefix in _REPO_TYPE_PREFIX.items():
            if prefix and left.startswith(prefix):
                repo_type, left = rtype, left[len(prefix) :]
                break
        revision, sep, filename = right.partition("/")
        if not sep or not filename or not left:
            return None
        return repo_type, unquote(left), unquote(revision), unquote(filename)

    def _dispatch(self, handler: _Handler, head: bool) -> None:
        parsed = self._parse(handler.path)
        if parsed is None:
            handler.send_json(404, {"error": "Not Found"}, head=head)
            return
        repo_type, repo_id, revision, filename = parsed
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                handler.send_json(
                    404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, head=head
                )
                return
            sha = repo.branches.get(revision) or (revision if revision in repo.commits else None)
            if sha is None:
                handler.send_json(
                    404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}, head=head
                )
                return
            entry = repo.commits[sha].get(filename)
            if entry is None:
                handler.send_json(
                    404,
                    {"error": "Entry not found"},
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
                    head=head,
                )
                return
            key = (repo_type, repo_id, filename)
            content = entry.data
            if key in self._corrupt:
                replacement = self._corrupt[key]
                content = _flip(entry.data) if replacement is None else replacement
            trunc = self._truncate.get(key)
            if trunc is not None and trunc.times is not None and trunc.times <= 0:
                trunc = None

        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.etag}"',
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.etag}"'
            headers["X-Linked-Size"] = str(len(entry.data))

        def consume() -> None:
            with self._lock:
                if trunc is not None and trunc.times is not None:
                    trunc.times -= 1

        handler.send_content(
            announced_size=len(entry.data),
            content=content,
            headers=headers,
            head=head,
            truncation=trunc,
            consume_truncation=consume,
        )


# --------------------------------------------------------------------------------------------------------------------
# Plain URL file server
# --------------------------------------------------------------------------------------------------------------------


class UrlServer(_ServerBase):
    """Loopback plain-HTTP file server: GET/HEAD ``/<path>`` -> 200 with Content-Length, ETag (quoted sha256) and
    Range support; unknown path -> 404 (text body)."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._corrupt: dict[str, bytes | None] = {}
        self._truncate: dict[str, _Truncation] = {}
        self._throttle: dict[str, _Throttle] = {}
        self._fail: dict[str, tuple[int, str]] = {}
        super().__init__()

    @staticmethod
    def _key(path: str) -> str:
        return "/" + path.lstrip("/")

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (e.g. ``"weights/x.pth"``); returns its full URL."""
        key = self._key(path)
        with self._lock:
            self._files[key] = bytes(data)
        return self.endpoint + quote(key)

    def url(self, path: str) -> str:
        return self.endpoint + quote(self._key(path))

    def corrupt(self, path: str, data: bytes | None = None) -> None:
        """Serve other bytes (default: every byte XOR 0xFF, same length) while the ETag still names the original."""
        with self._lock:
            self._corrupt[self._key(path)] = None if data is None else bytes(data)

    def truncate(self, path: str, n: int, *, times: int | None = None) -> None:
        """Announce the full Content-Length but close after byte offset ``n`` (``times`` as in ``FakeHub``)."""
        with self._lock:
            self._truncate[self._key(path)] = _Truncation(int(n), times)

    def throttle(self, path: str, step: int, delay: float, *, header_delay: float = 0.0) -> None:
        """Send GET bodies ``step`` bytes at a time with ``delay`` seconds of silence after each step (a slow or
        dripping server); ``header_delay``: silence before the response headers. ``heal`` lifts it, also for a
        response already being sent."""
        with self._lock:
            self._throttle[self._key(path)] = _Throttle(int(step), float(delay), float(header_delay))

    def fail(self, path: str, status: int, reason: str | None = None) -> None:
        """Answer every request for ``path`` with HTTP ``status`` (e.g. 500, 503, 429, 410)."""
        with self._lock:
            self._fail[self._key(path)] = (int(status), reason or "")

    def heal(self, path: str) -> None:
        with self._lock:
            self._corrupt.pop(self._key(path), None)
            self._truncate.pop(self._key(path), None)
            self._throttle.pop(self._key(path), None)
            self._fail.pop(self._key(path), None)

    def _dispatch(self, handler: _Handler, head: bool) -> None:
        key = unquote(urlsplit(handler.path).path)
        with self._lock:
            data = self._files.get(key)
            failure = self._fail.get(key)
            if failure is not None:
                _send_text(handler, failure[0], f"error {failure[0]}\n", head, reason=failure[1] or None)
                return
            if data is None:
                _send_text(handler, 404, "Not Found\n", head)
                return
            content = data
            if key in self._corrupt:
                content = _flip(data) if self._corrupt[key] is None else self._corrupt[key]
            trunc = self._truncate.get(key)
            if trunc is not None and trunc.times is not None and trunc.times <= 0:
                trunc = None

        def consume() -> None:
            with self._lock:
                if trunc is not None and trunc.times is not None:
                    trunc.times -= 1

        def current_throttle() -> _Throttle | None:
            with self._lock:
                return self._throttle.get(key)

        handler.send_content(
            announced_size=len(data),
            content=content,
            headers={"Content-Type": "application/octet-stream", "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
            head=head,
            truncation=trunc,
            consume_truncation=consume,
            throttle=current_throttle if current_throttle() is not None else None,
        )


# --------------------------------------------------------------------------------------------------------------------
# Clients pointed at the servers
# --------------------------------------------------------------------------------------------------------------------

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def no_proxies(monkeypatch: Any) -> None:
    """Unset the proxy env vars (via ``monkeypatch``): httpx (trust_env) and urllib both honour them, and loopback
    must be reached directly."""
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost,::1")


class NoSleepTime:
    """Stand-in for the ``time`` module inside huggingface_hub: retry back-off sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@dataclass
class HfEnv:
    """What :func:`point_hf_hub_at` returns (and the ``hf_env`` fixture yields)."""

    server: FakeHub
    endpoint: str
    home: Path  # HF_HOME
    cache_dir: Path  # HF_HUB_CACHE (= HF_HOME/hub); what hf_hub_download uses when cache_dir=None
    retry_sleeps: list[float]  # back-off sleeps huggingface_hub asked for (skipped)
    _monkeypatch: Any

    def set_offline(self, offline: bool = True) -> None:
        """Flip offline mode: env ``HF_HUB_OFFLINE`` and ``huggingface_hub.constants.HF_HUB_OFFLINE`` (2.4.0 reads the
        constant at call time via ``constants.is_offline_mode()``; its HTTP client event hook then raises
        ``OfflineModeIsEnabled`` before anything is sent)."""
        from huggingface_hub import constants

        self._monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", bool(offline))
        reset_hf_session()  # older (requests-based) versions bake offline mode into the session

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"

    def blobs_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.repo_dir(repo_id, repo_type) / "blobs"


def reset_hf_session() -> None:
    """Drop huggingface_hub's shared HTTP client, so the next request builds one from the current settings."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover
        return
    for name in ("close_session", "reset_sessions"):
        fn = getattr(_http, name, None)
        if fn is not None:
            fn()
            return


def point_hf_hub_at(server: FakeHub, home: Path, monkeypatch: Any) -> HfEnv:
    """Point ``huggingface_hub`` at ``server`` with an isolated cache under ``home`` (HF_HOME); returns
    :class:`HfEnv`. Every change goes through ``monkeypatch`` (undone at its teardown); call
    :func:`reset_hf_session` after the undo as well.

    huggingface_hub reads its env vars once, at import, into ``huggingface_hub.constants``; so both the env vars (for
    subprocesses / late importers) and the constants (for this process) are patched.
    """
    import huggingface_hub
    from huggingface_hub import constants

    cache = home / "hub"
    cache.mkdir(parents=True)
    endpoint = server.endpoint

    no_proxies(monkeypatch)
    for var in (
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def patch(obj: Any, name: str, value: Any) -> None:
        if hasattr(obj, name):  # tolerate other huggingface_hub versions
            monkeypatch.setattr(obj, name, value)

    consts = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "default_cache_path": str(cache),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "default_assets_cache_path": str(home / "assets"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        # Telemetry off also stops build_hf_headers() -> detect_agent() from fetching {ENDPOINT}/api/agent-harnesses.
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,  # hf_xet is Rust: its networking would bypass the socket guard
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_DISABLE_SYMLINKS_WARNING": True,
    }
    for name, value in consts.items():
        patch(constants, name, value)
    # Modules that copied constants by value at import time.
    try:
        from huggingface_hub.utils import _cache_manager

        patch(_cache_manager, "HF_HUB_CACHE", str(cache))
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.utils import _cache_assets

        patch(_cache_assets, "HF_ASSETS_CACHE", str(home / "assets"))
    except ImportError:  # pragma: no cover
        pass

    # Retry back-off would sleep (1 s per resume attempt in http_get, exponential in http_backoff): skip the sleeps.
    fake_time = NoSleepTime()
    for modname in ("huggingface_hub.file_download", "huggingface_hub.utils._http"):
        mod = __import__(modname, fromlist=["_"])
        if getattr(mod, "time", None) is time:
            monkeypatch.setattr(mod, "time", fake_time)

    reset_hf_session()  # the shared httpx client reads proxy env vars when created
    assert huggingface_hub.constants.ENDPOINT == endpoint
    return HfEnv(
        server=server,
        endpoint=endpoint,
        home=home,
        cache_dir=cache,
        retry_sleeps=fake_time.sleeps,
        _monkeypatch=monkeypatch,
    )
