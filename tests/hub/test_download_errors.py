"""Slow, stalled and failing servers, and URLs without a file name: each gets one clear error that says what
happened."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time

import pytest

from csap_zoo.hub import CheckpointError, CheckpointUnavailableError, ManifestError, UrlSource, default_manifest
from csap_zoo.hub.download import fetch_checkpoint
from csap_zoo.manifest import Manifest

DATA = bytes(range(256)) * 256  # 64 KiB


def _entry(url: str):
    return dataclasses.replace(default_manifest().get("mscan_tiny.in1k"), source=UrlSource(url),
                               sha256=hashlib.sha256(DATA).hexdigest(), sha256_prefix=None, size_bytes=len(DATA))


def _fetch_within(seconds: float, *args, **kwargs):
    """Run fetch_checkpoint in a thread; fail (instead of hanging) if it is still running after ``seconds``."""
    result = {}

    def run():
        try:
            result["path"] = fetch_checkpoint(*args, **kwargs)
        except Exception as err:
            result["error"] = err

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"fetch_checkpoint still running after {seconds} s"
    return result, time.monotonic() - started


@pytest.mark.parametrize("how", ["drip", "stalled headers"])
def test_overall_deadline_stops_a_slow_server(url_server, tmp_path, monkeypatch, how):
    url = url_server.add_file("slow/mscan_t.pth", DATA)
    if how == "drip":  # a byte every 0.2 s: every single read is quick, the whole would take 3.6 hours
        url_server.throttle("slow/mscan_t.pth", 1, 0.2)
    else:
        url_server.throttle("slow/mscan_t.pth", len(DATA), 0, header_delay=30)
    monkeypatch.setenv("CSAP_ZOO_DOWNLOAD_TIMEOUT", "1.5")
    result, took = _fetch_within(10, _entry(url), tmp_path / "cache")
    err = result.get("error")
    assert isinstance(err, CheckpointError), result
    message = str(err)
    assert url in message and "1.5 s" in message and "CSAP_ZOO_DOWNLOAD_TIMEOUT" in message
    assert f"of {len(DATA)} bytes" in message and "received" in message
    assert 1.4 < took < 8  # the deadline, plus slack for a busy machine
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_per_read_timeout_names_the_stalled_source(url_server, tmp_path, monkeypatch):
    url = url_server.add_file("stall/mscan_t.pth", DATA)
    url_server.throttle("stall/mscan_t.pth", 1000, 30)  # 1000 bytes, then silence
    monkeypatch.setenv("CSAP_ZOO_READ_TIMEOUT", "0.5")
    result, took = _fetch_within(10, _entry(url), tmp_path / "cache")
    err = result.get("error")
    assert isinstance(err, CheckpointError), result
    assert url in str(err) and "no data for 0.5 s" in str(err) and "1000 of 65536 bytes" in str(err)
    assert took < 8


def test_timeout_setting_must_be_a_positive_number(url_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CSAP_ZOO_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(CheckpointError, match="CSAP_ZOO_DOWNLOAD_TIMEOUT.*'soon'"):
        fetch_checkpoint(_entry(url_server.add_file("t/m.pth", DATA)), tmp_path / "cache")


@pytest.mark.parametrize("status, words", [
    (500, "Internal Server Error"), (503, "Service Unavailable"), (502, "Bad Gateway"), (429, "Too Many Requests"),
])
def test_server_failure_says_retry_later_not_stale(url_server, tmp_path, status, words):
    url = url_server.add_file("e/mscan_t.pth", DATA)
    url_server.fail("e/mscan_t.pth", status)
    with pytest.raises(CheckpointError) as info:
        fetch_checkpoint(_entry(url), tmp_path / "cache")
    message = str(info.value)
    assert f"HTTP {status} {words}" in message and "retry later" in message and url in message
    assert "stale" not in message
    assert not isinstance(info.value, CheckpointUnavailableError)


@pytest.mark.parametrize("status", [404, 410])
def test_missing_file_suggests_a_stale_manifest_entry(url_server, tmp_path, status):
    url = url_server.add_file("e/mscan_t.pth", DATA)
    url_server.fail("e/mscan_t.pth", status)
    with pytest.raises(CheckpointUnavailableError, match=f"HTTP {status} .*stale"):
        fetch_checkpoint(_entry(url), tmp_path / "cache")


@pytest.mark.parametrize("url", [
    "https://example.org/weights/..", "https://example.org/weights/.", "https://example.org/weights/",
    "https://example.org", "https://example.org/w/..?x=1",
])
def test_url_without_a_file_name_is_a_manifest_error_naming_the_entry(url):
    data = default_manifest().to_dict()
    entry = next(e for e in data["checkpoints"] if e["name"] == "mscan_tiny.in1k")
    entry["source"] = {"url": url}
    with pytest.raises(ManifestError, match=r"'mscan_tiny\.in1k'.*does not end in a file name"):
        Manifest.from_dict(data)


def test_url_file_name_ignores_query_and_fragment():
    assert UrlSource("https://example.org/w/mscan_t.pth?download=1#x").filename == "mscan_t.pth"
    assert UrlSource("https://example.org/w/a%20b.pth").filename == "a b.pth"
