"""Offline users of real checkpoints: every "not in the cache" / failed-download error names the exact cache path
of the entry and the command that installs a copy downloaded by hand; `csap-zoo download NAME --from-file FILE`
checks the file's sha256 against the manifest and places it where fetch_verified reads it (URL cache entry, or
huggingface_hub's snapshot), so create_model(..., pretrained=True) then works offline; a wrong file changes nothing.
URL downloads draw a tqdm bar on stderr only when asked (or on a terminal)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import pytest
import timm
import torch

import csap_zoo
from csap_zoo.cli import main as cli_main
from csap_zoo.hub import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, HfSource, UrlSource, default_manifest,
)
from csap_zoo.hub.cache import cache_path, url_cache_path
from csap_zoo.hub.download import fetch_checkpoint, fetch_verified, place_from_file
from csap_zoo.manifest import load_manifest

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
URL = "http://127.0.0.1:9/segnext/mscan_t_test.pth"  # never contacted: the tests are offline or use --from-file


@pytest.fixture(scope="module")
def imagenet():
    """An MSCAN-T ImageNet checkpoint's bytes and the model they come from."""
    torch.manual_seed(12)
    model = timm.create_model("mscan_tiny").eval()
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict()}, buffer)
    return model, buffer.getvalue()


def entry(data: bytes, source=None, name: str = "mscan_tiny.in1k"):
    return dataclasses.replace(default_manifest().get(name), status="published", source=source or UrlSource(URL),
                               sha256=hashlib.sha256(data).hexdigest(), sha256_prefix=None, size_bytes=len(data))


@pytest.fixture
def env(tmp_path, monkeypatch, imagenet):
    """A manifest (CSAP_ZOO_MANIFEST) whose mscan_tiny.in1k is the test checkpoint, an empty CSAP_ZOO_CACHE, offline,
    and torch.hub pointed into tmp_path."""
    checkpoint = entry(imagenet[1])
    manifest = load_manifest(default_manifest().path)
    manifest.upsert(checkpoint)
    path = manifest.save(tmp_path / "manifest.json")
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(path))
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return manifest, checkpoint


def cache_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")) if root.exists() else []


def test_offline_error_names_the_cache_path_and_the_command(env, tmp_path):
    _, checkpoint = env
    with pytest.raises(CheckpointUnavailableError) as info:
        fetch_checkpoint(checkpoint)
    message = str(info.value)
    assert str(url_cache_path(checkpoint)) in message
    assert f"csap-zoo download {checkpoint.name} --from-file FILE" in message and URL in message
    assert "\n" not in message


def test_failed_download_names_the_cache_path(url_server, tmp_path, imagenet):
    url = url_server.add_file("gone/mscan_t.pth", b"x")
    url_server.fail("gone/mscan_t.pth", 503)
    checkpoint = entry(imagenet[1], UrlSource(url))
    with pytest.raises(CheckpointError) as info:
        fetch_checkpoint(checkpoint, tmp_path / "cache", local_files_only=False)
    message = str(info.value)
    assert "503" in message and str(url_cache_path(checkpoint, tmp_path / "cache")) in message
    assert f"--from-file FILE --cache-dir {tmp_path / 'cache'}" in message


def test_from_file_places_the_file_and_create_model_works_offline(env, tmp_path, imagenet, capsys):
    manifest, checkpoint = env
    source, data = imagenet
    by_hand = tmp_path / "Downloads" / "mscan_t_test.pth"
    by_hand.parent.mkdir()
    by_hand.write_bytes(data)

    assert cli_main(["download", checkpoint.name, "--from-file", str(by_hand)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(url_cache_path(checkpoint)) and "sha256" in out.err
    assert url_cache_path(checkpoint).read_bytes() == data and by_hand.exists()

    model = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=3).eval()  # offline, from the cache
    with torch.no_grad():
        expected = source.forward_intermediates(X, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(expected, model.backbone(X)))
    assert cli_main(["download", checkpoint.name]) == 0  # a plain download now finds it (offline)
    assert capsys.readouterr().out.strip() == str(url_cache_path(checkpoint))


def test_a_wrong_file_is_refused_and_the_cache_is_untouched(env, tmp_path, imagenet, capsys):
    _, checkpoint = env
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"X" + imagenet[1][1:])
    assert cli_main(["download", checkpoint.name, "--from-file", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "sha256" in err and checkpoint.sha256 in err and "not changed" in err
    assert not (tmp_path / "cache").exists()

    # an existing good copy stays as it was
    good = tmp_path / "good.pth"
    good.write_bytes(imagenet[1])
    placed = place_from_file(checkpoint, good)
    before = (placed.stat().st_ino, placed.read_bytes())
    with pytest.raises(CheckpointIntegrityError, match="not changed"):
        place_from_file(checkpoint, wrong)
    assert (placed.stat().st_ino, placed.read_bytes()) == before
    assert cache_files(tmp_path / "cache") == [placed]
    assert cli_main(["download", checkpoint.name, "--from-file", str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth does not exist; give the checkpoint file" in capsys.readouterr().err


def test_hub_entry_from_file_goes_into_the_hub_cache(hf_env, tmp_path):
    data = b"hub weights " * 1000
    revision = "0123456789abcdef0123456789abcdef01234567"
    checkpoint = entry(data, HfSource("zoo-test/manual", revision, "model.safetensors"), name="csap_tiny.ade20k")
    hf_env.set_offline(True)
    with pytest.raises(CheckpointUnavailableError) as info:
        fetch_verified(checkpoint)
    pointer = hf_env.cache_dir / "models--zoo-test--manual" / "snapshots" / revision / "model.safetensors"
    assert cache_path(checkpoint) == pointer and str(pointer) in str(info.value)
    assert "--from-file" in str(info.value)

    by_hand = tmp_path / "model.safetensors"
    by_hand.write_bytes(data)
    assert place_from_file(checkpoint, by_hand) == pointer
    assert pointer.is_symlink()  # huggingface_hub's layout: snapshot link -> blobs/<sha256>
    assert pointer.resolve() == hf_env.cache_dir / "models--zoo-test--manual" / "blobs" / checkpoint.sha256
    verified = fetch_verified(checkpoint)  # offline: huggingface_hub finds it
    assert verified.data == data and verified.path == pointer
    assert hf_env.server.requests == []


def test_progress_bar_only_when_asked(url_server, tmp_path, imagenet, capfd, monkeypatch):
    monkeypatch.delenv("CSAP_ZOO_PROGRESS", raising=False)
    data = imagenet[1]
    url = url_server.add_file("bar/mscan_t_bar.pth", data)
    checkpoint = entry(data, UrlSource(url))
    fetch_checkpoint(checkpoint, tmp_path / "quiet", local_files_only=False)  # stderr is captured: no terminal
    assert capfd.readouterr().err == ""
    fetch_checkpoint(checkpoint, tmp_path / "bar", local_files_only=False, progress=True)
    err = capfd.readouterr().err
    assert "mscan_t_bar.pth" in err and "100%" in err, err

    manifest = load_manifest(default_manifest().path)
    manifest.upsert(checkpoint)
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(manifest.save(tmp_path / "manifest.json")))
    assert cli_main(["download", checkpoint.name, "--progress", "--cache-dir", str(tmp_path / "cli")]) == 0
    assert "100%" in capfd.readouterr().err
    monkeypatch.setenv("CSAP_ZOO_PROGRESS", "1")
    assert cli_main(["download", checkpoint.name, "--no-progress", "--cache-dir", str(tmp_path / "cli2")]) == 0
    assert capfd.readouterr().err == ""
    fetch_checkpoint(checkpoint, tmp_path / "env", local_files_only=False)
    assert "100%" in capfd.readouterr().err
