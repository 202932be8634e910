"""timm.create_model("mscan_tiny", pretrained=True) and csap-zoo share one cached copy of the MSCAN ImageNet file:
whichever comes first downloads it (loopback URL server, requests counted), the other reuses it, offline too."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import pytest
import timm
import torch

import csap_zoo
from csap_zoo.hub import UrlSource, default_manifest
from csap_zoo.hub.cache import torch_hub_path, url_cache_path
from csap_zoo.hub.download import fetch_verified
from csap_zoo.manifest import load_manifest

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
# the file name of timm's config for mscan_tiny.in1k (csap_zoo/models/mscan.py default_cfgs) and the manifest's entry
TIMM_FILE = os.path.basename(timm.models.get_pretrained_cfg("mscan_tiny.in1k").url)


@pytest.fixture
def shared(url_server, tmp_path, monkeypatch):
    """The MSCAN-T file served on loopback under timm's file name; the manifest entry points at it; empty caches."""
    torch.manual_seed(21)
    source = timm.create_model("mscan_tiny").eval()
    buffer = io.BytesIO()
    torch.save({"state_dict": source.state_dict()}, buffer)
    data = buffer.getvalue()
    url = url_server.add_file(f"pretrain/segnext/{TIMM_FILE}", data)
    manifest = load_manifest(default_manifest().path)
    entry = manifest.get("mscan_tiny.in1k")
    manifest.upsert(dataclasses.replace(entry, source=UrlSource(url), sha256=hashlib.sha256(data).hexdigest(),
                                        sha256_prefix=None, size_bytes=len(data)))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "csap"))
    monkeypatch.delenv("CSAP_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return source, url, manifest


def timm_pretrained(url):
    return timm.create_model("mscan_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=url)).eval()


def same_backbone(model, source) -> bool:
    with torch.no_grad():
        expected = source.forward_intermediates(X, intermediates_only=True)
        return all(torch.equal(a, b) for a, b in zip(expected, model.eval().backbone(X)))


def gets(server):
    return [path for method, path in server.requests if method == "GET"]


def test_the_entry_names_timms_cache_file(shared):
    _, _, manifest = shared
    assert torch_hub_path(manifest.get("mscan_tiny.in1k")) == Path(torch.hub.get_dir()) / "checkpoints" / TIMM_FILE
    assert torch_hub_path(manifest.get("segnext_tiny.ade20k")) is None  # timm has no such model


def test_timm_first_then_csap_zoo_downloads_nothing(shared, url_server, monkeypatch):
    source, url, manifest = shared
    timm_model = timm_pretrained(url)
    assert len(gets(url_server)) == 1
    assert torch.equal(timm_model.stages[0].downsample.proj[0].weight, source.stages[0].downsample.proj[0].weight)

    verified = fetch_verified(manifest.get("mscan_tiny.in1k"))
    assert verified.path == Path(torch.hub.get_dir()) / "checkpoints" / TIMM_FILE
    model = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=2, manifest=manifest)
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    offline = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=2, manifest=manifest)
    assert same_backbone(model, source) and same_backbone(offline, source)
    assert len(gets(url_server)) == 1


def test_csap_zoo_first_then_timm_downloads_nothing(shared, url_server):
    source, url, manifest = shared
    model = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=2, manifest=manifest)
    assert same_backbone(model, source) and len(gets(url_server)) == 1
    entry = manifest.get("mscan_tiny.in1k")
    ours, timms = url_cache_path(entry), Path(torch.hub.get_dir()) / "checkpoints" / TIMM_FILE
    assert ours.read_bytes() == timms.read_bytes()
    assert os.stat(ours).st_ino == os.stat(timms).st_ino  # one file on disk (a hard link), not two copies

    timm_model = timm_pretrained(url)
    assert len(gets(url_server)) == 1
    assert torch.equal(timm_model.stages[0].downsample.proj[0].weight, source.stages[0].downsample.proj[0].weight)


def test_a_damaged_timm_copy_is_ignored_and_left_alone(shared, url_server):
    source, url, manifest = shared
    timms = Path(torch.hub.get_dir()) / "checkpoints" / TIMM_FILE
    timms.parent.mkdir(parents=True)
    timms.write_bytes(b"not a checkpoint")
    model = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=2, manifest=manifest)
    assert same_backbone(model, source) and len(gets(url_server)) == 1  # downloaded into csap-zoo's own cache
    assert timms.read_bytes() == b"not a checkpoint"  # torch.hub's file: not ours to remove
