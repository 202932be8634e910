"""Servers that lie about or overrun a checkpoint's size: the download stops at the size our side expects (the
manifest's ``size_bytes``, else the cap), streams to disk rather than memory, and the deadline comes from our side,
never from the server's Content-Length. Each server here is a real HTTP server on loopback."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from csap_zoo.hub import CheckpointError, UrlSource, default_manifest
from csap_zoo.hub.download import fetch_checkpoint

import _servers

DATA = bytes(range(256)) * 40  # 10 KiB: the entry's real file
CHUNK = b"\0" * 65536


class _Hostile(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode, self.sent, self.done = mode, 0, threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/w/0/mscan_t.pth"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        server: _Hostile = self.server  # type: ignore[assignment]
        if server.mode.startswith("redirect"):
            return self._redirect(server)
        self.send_response(200)
        if server.mode == "endless":  # no Content-Length, 600 MiB of zeros unless the client hangs up
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(9600):
                    self.wfile.write(CHUNK)
                    server.sent += len(CHUNK)
            except OSError:
                pass
        else:  # "huge length": announces 10**13 bytes, then sends the real file and hangs up
            self.send_header("Content-Length", str(10 ** 13))
            self.end_headers()
            self.wfile.write(DATA)
            server.sent += len(DATA)
        server.done.set()


    def _redirect(self, server: "_Hostile") -> None:
        """"redirect N": /w/<k>/mscan_t.pth -> /w/<k+1>/... for k < N, then the file; "redirect loop": 0 -> 1 -> 0."""
        step = int(self.path.split("/")[2]) if self.path.count("/") > 2 else 0
        hops = 1 if server.mode == "redirect loop" else int(server.mode.split()[1])
        if step >= hops and server.mode != "redirect loop":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
            return
        following = 0 if server.mode == "redirect loop" and step == 1 else step + 1
        self.send_response(302)
        self.send_header("Location", f"/w/{following}/mscan_t.pth")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def hostile(monkeypatch) -> Iterator:
    _servers.no_proxies(monkeypatch)
    servers = []

    def start(mode: str) -> _Hostile:
        servers.append(_Hostile(mode))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _entry(url: str, size=len(DATA)):
    return dataclasses.replace(default_manifest().get("mscan_tiny.in1k"), source=UrlSource(url), status="published",
                               sha256=hashlib.sha256(DATA).hexdigest(), sha256_prefix=None, size_bytes=size)


def _cache_files(root):
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")] if root.exists() else []


def test_an_endless_body_stops_at_the_manifest_size(hostile, tmp_path):
    server = hostile("endless")
    with pytest.raises(CheckpointError, match=f"sent at least {len(DATA) + 1} bytes, more than its manifest size"):
        fetch_checkpoint(_entry(server.url), tmp_path / "cache", local_files_only=False)
    assert server.done.wait(30)
    assert server.sent < 64 * len(CHUNK)  # hung up after a few chunks of the 9600 (kernel buffers hold the rest)
    assert _cache_files(tmp_path / "cache") == []


def test_an_entry_without_a_size_stops_at_the_cap(hostile, tmp_path, monkeypatch):
    monkeypatch.setenv("CSAP_ZOO_MAX_DOWNLOAD_BYTES", str(3 * len(CHUNK)))
    server = hostile("endless")
    with pytest.raises(CheckpointError, match=r"more than the 196608-byte cap .*CSAP_ZOO_MAX_DOWNLOAD_BYTES"):
        fetch_checkpoint(_entry(server.url, size=None), tmp_path / "cache", local_files_only=False)
    assert _cache_files(tmp_path / "cache") == []


def test_an_announced_size_above_the_manifest_is_refused_at_once(hostile, tmp_path):
    server = hostile("huge length")
    with pytest.raises(CheckpointError, match=f"announced {10 ** 13} bytes"):
        fetch_checkpoint(_entry(server.url), tmp_path / "cache", local_files_only=False)
    assert _cache_files(tmp_path / "cache") == []


def test_the_servers_length_never_sets_the_deadline(hostile, tmp_path, monkeypatch):
    """No size in the manifest, a 10**13-byte Content-Length and a body that ends early: the download fails on
    the short body, and a slow one would have met the default 1-hour deadline, not one of years."""
    from csap_zoo.hub import http

    seen = []
    real = http.Deadline.__init__

    def spy(self, seconds):
        seen.append(self)
        real(self, seconds)

    monkeypatch.setattr(http.Deadline, "__init__", spy)
    monkeypatch.setenv("CSAP_ZOO_MAX_DOWNLOAD_BYTES", str(10 ** 14))
    server = hostile("huge length")
    with pytest.raises(CheckpointError, match=f"stopped after {len(DATA)} of {10 ** 13} bytes"):
        fetch_checkpoint(_entry(server.url, size=None), tmp_path / "cache", local_files_only=False)
    assert [watchdog.seconds for watchdog in seen] == [http.DEADLINE_UNKNOWN_SIZE]


def test_a_download_within_the_size_is_read_back_from_disk(url_server, tmp_path):
    url = url_server.add_file("ok/mscan_t.pth", DATA)
    path = fetch_checkpoint(_entry(url), tmp_path / "cache", local_files_only=False)
    assert path.read_bytes() == DATA


def test_a_long_redirect_chain_is_called_long_and_a_loop_a_loop(hostile, tmp_path):
    assert fetch_checkpoint(_entry(hostile("redirect 10").url), tmp_path / "a", local_files_only=False).is_file()
    with pytest.raises(CheckpointError, match="more than 10 redirects in a row") as info:
        fetch_checkpoint(_entry(hostile("redirect 30").url), tmp_path / "b", local_files_only=False)
    assert "loop" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"redirects in a loop \(http://.*/w/0/mscan_t.pth -> .*/w/1/mscan_t.pth "
                                              r"-> .*/w/0/mscan_t.pth\)"):
        fetch_checkpoint(_entry(hostile("redirect loop").url), tmp_path / "c", local_files_only=False)
    assert _cache_files(tmp_path / "b") == [] and _cache_files(tmp_path / "c") == []
