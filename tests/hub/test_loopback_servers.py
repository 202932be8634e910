"""Prove the loopback servers of tests/_servers.py (fixtures in tests/conftest.py) against the REAL clients
(huggingface_hub, urllib, torch.hub), and pin down what huggingface_hub (2.4.0) actually does on the wire and on disk."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import _CACHED_NO_EXIST, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# tests/conftest.py's NetworkAccessBlocked is a RuntimeError subclass; matched by message so this file does not need
# to import conftest (works under any --import-mode).
BLOCKED = dict(expected_exception=RuntimeError, match="non-loopback network access blocked")

REPO = "csap-test/tiny"
FILE = "model.safetensors"


def _data(n: int = 64 * 1024, seed: bytes = b"x") -> bytes:
    out = b""
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:n]


def _stray_files(blobs_dir):
    return sorted(p.name for p in blobs_dir.iterdir()) if blobs_dir.exists() else []


# ---------------------------------------------------------------------------------------------------------------------
# hf_server + hf_env with the real hf_hub_download
# ---------------------------------------------------------------------------------------------------------------------


def test_env_points_hub_at_loopback(hf_env, hf_server):
    assert constants.ENDPOINT == hf_server.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_CACHE == str(hf_env.cache_dir) == os.environ["HF_HUB_CACHE"]
    assert constants.HF_HUB_OFFLINE is False
    assert constants.HF_HUB_DISABLE_TELEMETRY is True and constants.HF_HUB_DISABLE_XET is True
    assert hf_server.endpoint.startswith("http://127.0.0.1:")


def test_first_download_exact_bytes_then_cached(hf_env, hf_server):
    data = _data()
    sha = hf_server.add_file(REPO, FILE, data)
    assert len(sha) == 40 and sha == hf_server.commit_sha(REPO)
    path = hf_server.path(REPO, FILE)
    assert path == f"/{REPO}/resolve/main/{FILE}"

    local = hf_hub_download(REPO, FILE, revision="main")
    with open(local, "rb") as f:
        assert f.read() == data
    # First download: one HEAD (metadata) + one GET (content), no other endpoint (no /api/... call).
    assert hf_server.requests == [("HEAD", path), ("GET", path)]
    head, get = hf_server.log
    assert head.headers.get("Accept-Encoding") == "identity"
    assert "Range" not in get.headers

    # Cache layout: snapshots/<commit>/<file> -> blobs/<sha256 = ETag>, refs/main = commit.
    repo_dir = hf_env.repo_dir(REPO)
    assert local == str(repo_dir / "snapshots" / sha / FILE)
    assert os.path.realpath(local) == str(repo_dir / "blobs" / hashlib.sha256(data).hexdigest())
    assert (repo_dir / "refs" / "main").read_text() == sha

    # Second online call, same args: 2.4.0 still revalidates with ONE HEAD (no GET), returns the same path.
    hf_server.clear_requests()
    assert hf_hub_download(REPO, FILE, revision="main") == local
    assert hf_server.requests == [("HEAD", path)]

    # local_files_only=True: zero requests.
    hf_server.clear_requests()
    assert hf_hub_download(REPO, FILE, revision="main", local_files_only=True) == local
    assert hf_server.requests == []

    # Offline mode (HF_HUB_OFFLINE): zero requests, served from refs/main -> snapshot.
    hf_env.set_offline(True)
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
    assert hf_hub_download(REPO, FILE, revision="main") == local
    assert hf_hub_download(REPO, FILE) == local  # revision=None means "main"
    assert hf_server.requests == []

    # Back online: revalidation HEAD again.
    hf_env.set_offline(False)
    assert hf_hub_download(REPO, FILE) == local
    assert hf_server.requests == [("HEAD", path)]


def test_offline_empty_cache_raises(hf_env, hf_server):
    hf_server.add_file(REPO, FILE, _data())
    hf_env.set_offline(True)
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(REPO, FILE, revision="main")
    # The request is blocked client-side (httpx event hook) before anything is sent.
    assert isinstance(info.value.__cause__, OfflineModeIsEnabled)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, EntryNotFoundError)
    assert hf_server.requests == []


def test_local_files_only_empty_cache_raises(hf_env, hf_server):
    hf_server.add_file(REPO, FILE, _data())
    with pytest.raises(LocalEntryNotFoundError, match="local_files_only"):
        hf_hub_download(REPO, FILE, local_files_only=True)
    assert hf_server.requests == []


def test_pinned_commit_sha(hf_env, hf_server):
    data = _data(seed=b"pinned")
    sha = hf_server.add_file(REPO, FILE, data)
    local = hf_hub_download(REPO, FILE, revision=sha)
    with open(local, "rb") as f:
        assert f.read() == data
    sha_path = hf_server.path(REPO, FILE, revision=sha)
    assert hf_server.requests == [("HEAD", sha_path), ("GET", sha_path)]
    # A commit sha is not a branch: no refs/<sha> file.
    assert not (hf_env.repo_dir(REPO) / "refs" / sha).exists()

    # Pinned + cached: hf_hub_download short-circuits before any request, even online.
    hf_server.clear_requests()
    assert hf_hub_download(REPO, FILE, revision=sha) == local
    assert hf_server.requests == []

    # The branch resolves to the same snapshot (HEAD only, blob already there).
    assert hf_hub_download(REPO, FILE, revision="main") == local
    assert hf_server.requests == [("HEAD", hf_server.path(REPO, FILE))]


def test_branch_moves_to_new_commit(hf_env, hf_server):
    old = hf_server.add_file(REPO, FILE, b"v1")
    p_old = hf_hub_download(REPO, FILE)
    new = hf_server.new_commit(REPO)
    assert new != old and hf_server.commit_sha(REPO) == new
    hf_server.add_file(REPO, FILE, b"v2")  # goes into the new head commit
    p_new = hf_hub_download(REPO, FILE)
    assert p_new != p_old and new in p_new
    assert Path(p_new).read_bytes() == b"v2" and Path(p_old).read_bytes() == b"v1"
    # The old commit is still served by sha.
    hf_server.clear_requests()
    assert hf_hub_download(REPO, FILE, revision=old) == p_old
    assert hf_server.requests == []


def test_missing_file_repo_revision(hf_env, hf_server):
    sha = hf_server.add_file(REPO, FILE, _data())

    with pytest.raises(RemoteEntryNotFoundError) as info:
        hf_hub_download(REPO, "nope.bin")
    assert isinstance(info.value, EntryNotFoundError)
    assert info.value.response.status_code == 404
    # Our 404 carries X-Repo-Commit like the Hub's, so the client caches the non-existence.
    assert try_to_load_from_cache(REPO, "nope.bin", cache_dir=hf_env.cache_dir) is _CACHED_NO_EXIST
    assert (hf_env.repo_dir(REPO) / ".no_exist" / sha / "nope.bin").exists()

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("csap-test/does-not-exist", FILE)

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, FILE, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, FILE, revision="0" * 40)

    # Each failure is a single HEAD; nothing else was requested.
    assert [m for m, _ in hf_server.requests] == ["HEAD"] * 4


def test_truncated_download_raises_and_leaves_no_partial(hf_env, hf_server):
    import httpx2  # huggingface_hub 2.4.0's HTTP client

    data = _data(seed=b"trunc")
    hf_server.add_file(REPO, FILE, data)
    hf_server.truncate(REPO, FILE, 1000)  # every GET is cut after 1000 bytes

    with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection"):
        hf_hub_download(REPO, FILE)
    methods = [m for m, _ in hf_server.requests]
    # 1 HEAD + 1 GET + 5 resume attempts (http_get's _nb_retries=5), each after a 1 s sleep (skipped by hf_env).
    assert methods == ["HEAD"] + ["GET"] * 6
    assert hf_env.retry_sleeps == [1] * 5
    # The partial bytes were never flushed to disk before the error (iter_bytes buffers DOWNLOAD_CHUNK_SIZE = 10 MiB),
    # so every retry restarted from 0 without a Range header.
    assert all("Range" not in r.headers for r in hf_server.log)

    # Nothing partial is left: the per-process "<etag>.<rand>.incomplete" temp file is unlinked on failure;
    # no blob, no snapshot pointer. (refs/main was already written before the download started.)
    blobs = hf_env.blobs_dir(REPO)
    assert _stray_files(blobs) == []
    assert not (hf_env.repo_dir(REPO) / "snapshots").exists() or not any(
        (hf_env.repo_dir(REPO) / "snapshots").rglob(FILE)
    )
    assert (hf_env.repo_dir(REPO) / "refs" / "main").exists()
    # So local_files_only finds nothing.
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, FILE, local_files_only=True)


def test_truncated_once_resumes_with_range(hf_env, hf_server, monkeypatch):
    # Small chunk size so the received prefix is written before the connection drops -> resume via Range.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    data = _data(seed=b"resume")
    hf_server.add_file(REPO, FILE, data)
    hf_server.truncate(REPO, FILE, 10_000, times=1)

    local = hf_hub_download(REPO, FILE)
    with open(local, "rb") as f:
        assert f.read() == data
    gets = [r for r in hf_server.log if r.method == "GET"]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    received = gets[1].headers["Range"]
    assert received.startswith("bytes=") and 0 < int(received[6:].rstrip("-")) <= 10_000
    assert _stray_files(hf_env.blobs_dir(REPO)) == [hashlib.sha256(data).hexdigest()]


def test_corrupted_content_is_not_verified(hf_env, hf_server):
    data = _data(seed=b"corrupt")
    hf_server.add_file(REPO, FILE, data)
    hf_server.corrupt(REPO, FILE)  # same length, every byte flipped; HEAD still announces sha256(data)

    local = hf_hub_download(REPO, FILE)
    with open(local, "rb") as f:
        got = f.read()
    # 2.4.0 does NOT hash the content against the (sha256) ETag: the wrong bytes are cached under the announced name.
    assert got != data and len(got) == len(data)
    blob_name = os.path.basename(os.path.realpath(local))
    assert blob_name == hashlib.sha256(data).hexdigest() != hashlib.sha256(got).hexdigest()


def test_corrupted_content_of_other_length_fails_size_check(hf_env, hf_server):
    data = _data(seed=b"size")
    hf_server.add_file(REPO, FILE, data)
    hf_server.corrupt(REPO, FILE, data[:-10])
    # The only integrity check is the size announced by HEAD (X-Linked-Size / Content-Length).
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(REPO, FILE)
    assert _stray_files(hf_env.blobs_dir(REPO)) == []


def test_non_lfs_file_uses_git_sha1_etag(hf_env, hf_server):
    hf_server.add_file(REPO, "config.json", b'{"a": 1}', lfs=False)
    local = hf_hub_download(REPO, "config.json")
    assert Path(local).read_bytes() == b'{"a": 1}'
    git_sha1 = hashlib.sha1(b"blob 8\0" + b'{"a": 1}').hexdigest()
    assert os.path.basename(os.path.realpath(local)) == git_sha1


def test_subfolder_and_dataset_repo(hf_env, hf_server):
    hf_server.add_file("org/ds", "sub/dir/x.bin", b"abc", repo_type="dataset")
    local = hf_hub_download("org/ds", "x.bin", subfolder="sub/dir", repo_type="dataset")
    assert Path(local).read_bytes() == b"abc"
    assert hf_server.requests[0] == ("HEAD", "/datasets/org/ds/resolve/main/sub/dir/x.bin")


def test_server_range_and_errors_raw(hf_server):
    """Protocol details checked with a plain client (no huggingface_hub)."""
    data = bytes(range(256)) * 4
    sha = hf_server.add_file(REPO, FILE, data)
    url = hf_server.url(REPO, FILE)

    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req) as r:
        h = r.headers
        assert h["X-Repo-Commit"] == sha
        assert h["ETag"] == h["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert h["Content-Length"] == h["X-Linked-Size"] == str(len(data))

    req = urllib.request.Request(url, headers={"Range": "bytes=1000-"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert r.read() == data[1000:]

    for target, code in [
        (hf_server.url(REPO, "missing"), "EntryNotFound"),
        (hf_server.url("x/y", FILE), "RepoNotFound"),
        (hf_server.url(REPO, FILE, revision="dev"), "RevisionNotFound"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(target)
        assert info.value.code == 404
        assert info.value.headers["X-Error-Code"] == code
        assert "error" in json.loads(info.value.read())
        info.value.close()


# ---------------------------------------------------------------------------------------------------------------------
# url_server
# ---------------------------------------------------------------------------------------------------------------------


def test_url_server_fetch_and_404(url_server):
    data = _data(seed=b"url")
    url = url_server.add_file("weights/tiny.pth", data)
    assert url == f"{url_server.endpoint}/weights/tiny.pth"
    with urllib.request.urlopen(url) as r:
        assert r.read() == data
        assert r.headers["Content-Length"] == str(len(data))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url_server.url("weights/missing.pth"))
    assert info.value.code == 404
    assert url_server.requests == [("GET", "/weights/tiny.pth"), ("GET", "/weights/missing.pth")]
    url_server.clear_requests()
    assert url_server.requests == []


def test_url_server_truncation(url_server):
    data = _data(seed=b"urltrunc")
    url = url_server.add_file("w.pth", data)
    url_server.truncate("w.pth", 100)
    # A full read() checks Content-Length and raises IncompleteRead ...
    with urllib.request.urlopen(url) as r:
        with pytest.raises(http.client.IncompleteRead) as info:
            r.read()
    assert len(info.value.partial) == 100
    # ... but chunked read(amt) (what torch.hub.download_url_to_file does) just returns b"" at EOF.
    with urllib.request.urlopen(url) as r:
        got = b""
        while chunk := r.read(8192):
            got += chunk
    assert got == data[:100]


def test_torch_hub_download_truncated_and_corrupt(url_server, tmp_path):
    torch_hub = pytest.importorskip("torch.hub")
    data = _data(seed=b"torch")
    digest = hashlib.sha256(data).hexdigest()
    url = url_server.add_file("ckpt.pth", data)

    dst = tmp_path / "ok.pth"
    torch_hub.download_url_to_file(url, str(dst), hash_prefix=digest[:10], progress=False)
    assert dst.read_bytes() == data

    url_server.truncate("ckpt.pth", 100)
    # Without a hash, torch.hub silently keeps a truncated file (it never compares with Content-Length).
    short = tmp_path / "short.pth"
    torch_hub.download_url_to_file(url, str(short), progress=False)
    assert short.read_bytes() == data[:100]
    # With hash_prefix the truncation is caught, and no file is left behind.
    bad = tmp_path / "bad.pth"
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch_hub.download_url_to_file(url, str(bad), hash_prefix=digest[:10], progress=False)
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ok.pth", "short.pth"]

    url_server.heal("ckpt.pth")
    url_server.corrupt("ckpt.pth")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch_hub.download_url_to_file(url, str(bad), hash_prefix=digest[:10], progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# network guard
# ---------------------------------------------------------------------------------------------------------------------


def test_network_guard_blocks_non_loopback(no_network):
    with pytest.raises(**BLOCKED):
        socket.create_connection(("203.0.113.1", 80), timeout=0.1)  # TEST-NET-3, never routed
    with socket.socket() as s, pytest.raises(**BLOCKED):
        s.connect(("203.0.113.1", 80))
    with pytest.raises(**BLOCKED):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(**BLOCKED):  # http.client -> socket.create_connection(("example.com", 80))
        urllib.request.urlopen("http://example.com/", timeout=0.1)
    assert no_network.attempts == [
        ("connect", ("203.0.113.1", 80)),
        ("connect", ("203.0.113.1", 80)),
        ("getaddrinfo", "huggingface.co"),
        ("connect", ("example.com", 80)),
    ]
    no_network.clear()  # otherwise teardown fails this test


def test_network_guard_allows_loopback(url_server, no_network):
    url = url_server.add_file("a", b"1").replace("127.0.0.1", "localhost")
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"1"
    assert no_network.attempts == []


def test_url_server_throttle_and_heal(url_server):
    import time

    data = _data(4000, seed=b"slow")
    url = url_server.add_file("slow.pth", data)
    url_server.throttle("slow.pth", 1000, 0.1)
    started = time.monotonic()
    with urllib.request.urlopen(url) as r:
        assert r.read() == data  # complete, only slow: 3 pauses of 0.1 s
    assert 0.3 <= time.monotonic() - started < 3
    url_server.throttle("slow.pth", 1000, 0, header_delay=0.3)
    started = time.monotonic()
    with urllib.request.urlopen(url) as r:
        assert time.monotonic() - started >= 0.3 and r.read() == data
    # healing speeds up a response already under way
    url_server.throttle("slow.pth", 100, 30)
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read1(100) == data[:100]
        url_server.heal("slow.pth")
        rest = b""
        while chunk := r.read1(4000):
            rest += chunk
    assert data[:100] + rest == data


def test_url_server_fail(url_server):
    url = url_server.add_file("e.pth", b"x")
    url_server.fail("e.pth", 503)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url)
    assert info.value.code == 503 and info.value.reason == "Service Unavailable"
    info.value.close()
    url_server.heal("e.pth")
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"x"
