"""The URL and Hub download caches under concurrency and after crashes: real child processes, SIGKILL, loopback
servers."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import csap_zoo
import csap_zoo.hub.cache as hub_cache
from csap_zoo.hub import CheckpointError, HfSource, UrlSource, default_manifest
from csap_zoo.hub.cache import url_cache_path
from csap_zoo.hub.download import fetch_checkpoint
from csap_zoo.manifest import load_manifest

CHILD = Path(__file__).with_name("_download_child.py")
HF_REPO = "zoo-test/cache"
_spec = importlib.util.spec_from_file_location("_download_child", CHILD)
_child_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_child_module)
fingerprint = _child_module.fingerprint


def _payload(seed: str, n: int = 200_000) -> bytes:
    block, out = seed.encode(), bytearray()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def _entry(name: str, source, data: bytes):
    return dataclasses.replace(default_manifest().get(name), status="published", source=source,
                               sha256=hashlib.sha256(data).hexdigest(), sha256_prefix=None, size_bytes=len(data))


def _manifest_file(tmp_path: Path, *entries) -> Path:
    manifest = load_manifest(default_manifest().path)
    for entry in entries:
        manifest.upsert(entry)
    return manifest.save(tmp_path / "manifest.json")


def _files(root: Path, pattern: str = "*") -> list:
    return sorted(p for p in Path(root).rglob(pattern) if p.is_file() and not p.name.endswith(".lock"))


def _child(tmp_path: Path, spec: dict, tag: str, **env) -> subprocess.Popen:
    spec_path = tmp_path / f"spec_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    return subprocess.Popen([sys.executable, str(CHILD), str(spec_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def _wait_ready(proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
    assert time.monotonic() < deadline


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


# ------------------------------------------------------------------ cache keyed by the full source
@pytest.fixture(scope="module")
def two_models():
    """Two segmentors whose weights files will be published under the same file name at different URLs."""
    out = {}
    for seed, name in ((1, "csap_tiny.ade20k"), (2, "csap_tiny.cityscapes")):
        torch.manual_seed(seed)
        model = csap_zoo.create_model(name).eval()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        out[name] = (safetensors_bytes(state), fingerprint(model.state_dict()))
    return out


@pytest.mark.slow
def test_concurrent_loads_of_same_named_files_get_their_own_weights(url_server, two_models, tmp_path):
    entries = []
    for folder, (name, (data, _)) in zip("ab", two_models.items()):
        url = url_server.add_file(f"{folder}/model.safetensors", data)
        url_server.throttle(f"{folder}/model.safetensors", 1 << 20, 0.02)  # downloads overlap
        entries.append(_entry(name, UrlSource(url), data))
    names = [entries[i % 2].name for i in range(12)]
    (tmp_path / "out").mkdir()
    spec = dict(mode="loads", manifest=str(_manifest_file(tmp_path, *entries)), cache=str(tmp_path / "cache"),
                names=names, out=str(tmp_path / "out"))
    proc = _child(tmp_path, spec, "loads")
    _wait_ready(proc)
    proc.wait(timeout=300)
    results = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(len(names))]
    wrong = [r for r in results if r.get("fingerprint") != two_models[r["name"]][1]]
    assert not wrong, f"{len(wrong)} of {len(results)} loads got other weights or failed: {wrong[:3]}"
    assert proc.returncode == 0
    assert len(_files(tmp_path / "cache", "model.safetensors")) == 2  # one verified copy per entry


def test_offline_loads_of_same_named_files_keep_both_copies(url_server, tmp_path):
    cache = tmp_path / "cache"
    entries = []
    for folder in "ab":
        data = _payload(folder)
        url = url_server.add_file(f"{folder}/weights.pth", data)
        entries.append(_entry("mscan_tiny.in1k", UrlSource(url), data))
    for entry in entries:
        fetch_checkpoint(entry, cache)
    url_server.clear_requests()
    for entry in entries + entries:
        path = fetch_checkpoint(entry, cache, local_files_only=True)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert url_server.requests == []
    assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(cache, "weights.pth")) == sorted(
        e.sha256 for e in entries)


def test_cache_file_name_stays_visible(url_server, tmp_path):
    data = _payload("visible")
    entry = _entry("mscan_tiny.in1k", UrlSource(url_server.add_file("x/mscan_t-1234.pth", data)), data)
    path = fetch_checkpoint(entry, tmp_path / "cache")
    # one folder per source under checkpoints/, the file keeps its published name
    assert path.name == "mscan_t-1234.pth" and path.parent.parent == tmp_path / "cache" / "checkpoints"


def test_create_model_loads_the_bytes_it_verified(url_server, two_models, tmp_path, monkeypatch):
    """Another process replaces the cached file right after this one checked its hash: the model must still get
    the verified weights, never the replacement."""
    (good, expected), (other, _) = two_models["csap_tiny.ade20k"], two_models["csap_tiny.cityscapes"]
    entry = _entry("csap_tiny.ade20k", UrlSource(url_server.add_file("a/model.safetensors", good)), good)
    manifest = load_manifest(default_manifest().path)
    manifest.upsert(entry)
    cache = tmp_path / "cache"
    fetch_checkpoint(entry, cache)
    cached = _files(cache, "model.safetensors")[0]

    real_sha256 = hashlib.sha256

    class SwapAfterHash:
        def __init__(self, *args):
            self._inner = real_sha256(*args)

        def update(self, data):
            self._inner.update(data)

        def hexdigest(self):
            digest = self._inner.hexdigest()
            if digest == entry.sha256 and cached.exists():
                replacement = cached.with_name("replacement.tmp")
                replacement.write_bytes(other)
                os.replace(replacement, cached)
            return digest

    monkeypatch.setattr(hub_cache, "hashlib", types.SimpleNamespace(sha256=SwapAfterHash))
    model = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=cache,
                                  local_files_only=True)
    assert fingerprint(model.state_dict()) == expected


# ------------------------------------------------------------------ crashes and concurrent downloads
@pytest.mark.slow
def test_sigkill_mid_download_leftover_is_cleaned_by_the_next_load(url_server, tmp_path):
    data = _payload("killed", 400_000)
    entry = _entry("mscan_tiny.in1k", UrlSource(url_server.add_file("w/mscan_t.pth", data)), data)
    url_server.throttle("w/mscan_t.pth", 16_384, 0.2)
    cache = tmp_path / "cache"
    proc = _child(tmp_path, dict(mode="fetch", manifest=str(_manifest_file(tmp_path, entry)), cache=str(cache),
                                 name=entry.name), "kill")
    _wait_ready(proc)
    partial = _wait_for(lambda: _files(cache, "*.partial"), 60, "the child's partial download")
    time.sleep(0.5)  # well into the transfer
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert all(p.exists() for p in partial)  # the crash left it behind

    url_server.heal("w/mscan_t.pth")
    path = fetch_checkpoint(entry, cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert _files(cache, "*.partial") == []


@pytest.mark.slow
def test_second_process_waits_for_a_live_download_and_keeps_its_partial(url_server, tmp_path, monkeypatch):
    data = _payload("live", 400_000)
    entry = _entry("mscan_tiny.in1k", UrlSource(url_server.add_file("w/mscan_t.pth", data)), data)
    url_server.throttle("w/mscan_t.pth", 16_384, 0.2)
    cache = tmp_path / "cache"
    proc = _child(tmp_path, dict(mode="fetch", manifest=str(_manifest_file(tmp_path, entry)), cache=str(cache),
                                 name=entry.name), "live")
    _wait_ready(proc)
    partial = _wait_for(lambda: _files(cache, "*.partial"), 60, "the child's partial download")

    # This process gives up waiting for the other download after 1 s; the live partial is left alone.
    monkeypatch.setenv("CSAP_ZOO_DOWNLOAD_TIMEOUT", "1")
    result = {}
    worker = threading.Thread(target=lambda: result.update(err=_raises(fetch_checkpoint, entry, cache)), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "a second loader must not start its own download of the same entry"
    assert isinstance(result["err"], CheckpointError) and "another process" in str(result["err"])
    assert all(p.exists() for p in partial) and proc.poll() is None

    # Once the first download finishes, a waiting loader uses its verified file without downloading again.
    monkeypatch.setenv("CSAP_ZOO_DOWNLOAD_TIMEOUT", "60")
    url_server.heal("w/mscan_t.pth")
    path = fetch_checkpoint(entry, cache)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert [m for m, _ in url_server.requests] == ["GET"]
    assert _files(cache, "*.partial") == []


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as err:
        return err
    return None


def test_cached_download_respects_umask(url_server, tmp_path):
    data = _payload("umask")
    entry = _entry("mscan_tiny.in1k", UrlSource(url_server.add_file("w/m.pth", data)), data)
    old = os.umask(0o022)
    try:
        path = fetch_checkpoint(entry, tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ------------------------------------------------------------------ Hugging Face cache: only its public API
@pytest.fixture
def hf_entry(hf_env):
    data = _payload("hub")
    sha = hf_env.server.add_file(HF_REPO, "model.pth", data)
    return _entry("mscan_tiny.in1k", HfSource(HF_REPO, sha, "model.pth"), data)


@pytest.mark.parametrize("failure", ["truncated", "offline"])
def test_hf_failure_keeps_another_downloads_incomplete_blob(hf_env, hf_entry, failure):
    blobs = hf_env.blobs_dir(HF_REPO)
    blobs.mkdir(parents=True)
    other = blobs / ("f" * 64 + ".0123abcd.incomplete")
    with open(other, "wb") as live_writer:  # another process is writing it right now
        live_writer.write(b"partial")
        live_writer.flush()
        if failure == "truncated":
            hf_env.server.truncate(HF_REPO, "model.pth", 1000)
        else:
            hf_env.set_offline(True)
        with pytest.raises(CheckpointError):
            fetch_checkpoint(hf_entry)
        assert other.exists()


def test_hf_damaged_cached_blob_is_downloaded_again(hf_env, hf_entry):
    path = fetch_checkpoint(hf_entry)
    blob = path.resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"bit rot")
    again = fetch_checkpoint(hf_entry)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hf_entry.sha256


def test_only_partials_of_our_own_pattern_are_ever_removed(url_server, tmp_path):
    """Next to the entry's file, an unlocked ``.<name>.<12 hex>.partial`` (what a killed download leaves) is removed
    at once; files that only look alike (a user's backup, other random parts, the flat layout's old names one folder
    up) are never touched, however old."""
    data = _payload("flat")
    entry = _entry("mscan_tiny.in1k", UrlSource(url_server.add_file("w/mscan_t.pth", data)), data)
    target = url_cache_path(entry, tmp_path / "cache")
    target.parent.mkdir(parents=True)
    ours = target.with_name(".mscan_t.pth.0123456789ab.partial")
    lookalikes = [target.with_name(n) for n in (".mscan_t.pth.mybackup.partial", ".mscan_t.pth.0123456789AB.partial",
                                                 ".mscan_t.pth.0123456789abc.partial", ".mscan_t.pth..partial")]
    lookalikes.append(target.parent.parent / ".mscan_t.pth.k2j4h5g6.partial")
    for path in [ours] + lookalikes:
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    fetch_checkpoint(entry, tmp_path / "cache")
    assert not ours.exists() and all(p.read_bytes() == b"half" for p in lookalikes)
