"""Prefix-only manifest entries (every published URL entry: 8 hex digits of sha256 in the file name) are trust on
first use: the first verified file pins its full sha256 beside the cache, with one warning; a later file that
matches the prefix but not the pin (a forged checkpoint) is refused, through the cache and through --from-file."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import pytest

from csap_zoo.errors import CheckpointIntegrityError
from csap_zoo.hub import UrlSource, default_manifest
from csap_zoo.hub.cache import pin_path, url_cache_path
from csap_zoo.hub.download import fetch_checkpoint, place_from_file
from csap_zoo.hub.catalog import model_catalog


def _forge(data: bytes, prefix: str) -> bytes:
    """Another file whose sha256 starts with ``prefix`` (4 hex digits here: found in ~65k tries)."""
    for n in range(1 << 24):
        candidate = data + n.to_bytes(4, "little")
        if hashlib.sha256(candidate).hexdigest().startswith(prefix):
            return candidate
    raise AssertionError("no forgery found")


@pytest.fixture
def prefix_entry(url_server):
    data = b"real weights " * 100
    prefix = hashlib.sha256(data).hexdigest()[:4]
    url = url_server.add_file("w/mscan_t.pth", data)
    entry = dataclasses.replace(default_manifest().get("mscan_tiny.in1k"), source=UrlSource(url), status="published",
                                sha256=None, sha256_prefix=prefix, size_bytes=None)
    return entry, data, _forge(data, prefix)


def test_the_first_download_pins_the_full_sha256_with_one_warning(prefix_entry, tmp_path):
    entry, data, _ = prefix_entry
    with pytest.warns(UserWarning, match=r"4-digit sha256 prefix .* full sha256 [0-9a-f]{64} is now pinned") as rec:
        fetch_checkpoint(entry, tmp_path / "cache", local_files_only=False)
    assert len(rec) == 1
    pin = json.loads(pin_path(entry, tmp_path / "cache").read_text())
    assert pin["sha256"] == hashlib.sha256(data).hexdigest() and pin["size_bytes"] == len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned about once: later loads are quiet
        fetch_checkpoint(entry, tmp_path / "cache", local_files_only=True)


def test_a_forged_file_matching_the_prefix_is_refused_after_the_pin(prefix_entry, tmp_path):
    entry, data, forged = prefix_entry
    with pytest.warns(UserWarning):
        path = fetch_checkpoint(entry, tmp_path / "cache", local_files_only=False)
    path.write_bytes(forged)  # someone replaces the cached file
    with pytest.raises(CheckpointIntegrityError, match="not the full sha256 pinned at its first download"):
        fetch_checkpoint(entry, tmp_path / "cache", local_files_only=True)
    (tmp_path / "forged.pth").write_bytes(forged)
    with pytest.raises(CheckpointIntegrityError, match="possibly by a forged one"):
        place_from_file(entry, tmp_path / "forged.pth", tmp_path / "cache")
    assert url_cache_path(entry, tmp_path / "cache").read_bytes() == forged  # --from-file changed nothing


def test_the_model_table_says_which_entries_are_prefix_only():
    rows = {r.name: r.weights for r in model_catalog("segnext_tiny*")}
    entry = default_manifest().get("segnext_tiny.ade20k")
    assert entry.sha256 is None and entry.sha256_prefix
    assert rows["segnext_tiny.ade20k"] == "published/prefix"
