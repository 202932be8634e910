"""pretrained=True end to end, offline: loopback Hugging Face Hub and URL servers, caches, hashes, failures."""
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save as safetensors_bytes

import csap_zoo
from csap_zoo.hub import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, HfSource, ManifestError, UrlSource,
    default_manifest,
)
from csap_zoo.hub.cache import url_cache_path
from csap_zoo.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
HF_REPO = "zoo-test/csap-tiny-ade20k"
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(123)
    return csap_zoo.create_model("csap_tiny.ade20k").eval()


@pytest.fixture(scope="module")
def weights(source_model):
    return safetensors_bytes({k: v.contiguous() for k, v in source_model.state_dict().items()})


def manifest_with(name, **changes):
    """The packaged manifest with entry ``name`` published at a test source."""
    manifest = load_manifest(default_manifest().path)
    entry = manifest.get(name)
    manifest.upsert(dataclasses.replace(entry, status="published", **changes))
    return manifest


def same_outputs(a, b):
    with torch.no_grad():
        return torch.equal(a(X), b(X))


def cache_files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file() and ".lock" not in p.name)


# ------------------------------------------------------------------ Hugging Face Hub
@pytest.fixture
def hf_manifest(hf_env, weights, url_server):
    sha = hf_env.server.add_file(HF_REPO, "model.safetensors", weights)
    manifest = manifest_with("csap_tiny.ade20k", source=HfSource(HF_REPO, sha, "model.safetensors"),
                             sha256=hashlib.sha256(weights).hexdigest(), size_bytes=len(weights))
    # the backbone's ImageNet checkpoint is reachable too: loading the full checkpoint must not touch it
    backbone_url = url_server.add_file("mscan_t-00000000.pth", b"never fetched")
    manifest.upsert(dataclasses.replace(manifest.get("mscan_tiny.in1k"), source=UrlSource(backbone_url)))
    return manifest, sha


def test_hf_download_verifies_caches_and_loads_offline(hf_env, hf_manifest, source_model, url_server):
    manifest, sha = hf_manifest
    path = hf_env.server.path(HF_REPO, "model.safetensors", sha)
    model = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest).eval()
    assert same_outputs(model, source_model)
    assert hf_env.server.requests == [("HEAD", path), ("GET", path)]
    assert url_server.requests == []  # a full checkpoint never downloads backbone weights
    assert model.data_config.test_size == (2048, 512) and model.data_config.dataset == "ade20k"

    hf_env.server.clear_requests()
    again = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest).eval()
    assert same_outputs(again, source_model)
    assert hf_env.server.requests == []  # pinned revision already cached: no request at all

    hf_env.set_offline(True)
    offline = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest).eval()
    assert same_outputs(offline, source_model)
    assert hf_env.server.requests == []


def test_hf_num_classes_change_reinitialises_only_the_classifier(hf_env, hf_manifest, source_model):
    manifest, _ = hf_manifest
    with pytest.warns(UserWarning, match="classifier is re-initialised"):
        model = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, num_classes=5, manifest=manifest)
    assert model.num_classes == 5
    ours, theirs = model.state_dict(), source_model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if "classifier" not in k)


def test_hf_corrupted_download_is_rejected_and_removed(hf_env, hf_manifest):
    manifest, _ = hf_manifest
    hf_env.server.corrupt(HF_REPO, "model.safetensors")
    with pytest.raises(CheckpointIntegrityError, match="checkpoint 'csap_tiny.ade20k' .* has sha256 .* removed"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest)
    repo = hf_env.repo_dir(HF_REPO)
    assert not any(p.is_file() for p in (repo / "blobs").iterdir())
    assert not any(p.exists() for p in (repo / "snapshots").rglob("model.safetensors"))
    hf_env.server.heal(HF_REPO, "model.safetensors")  # a retry then succeeds
    csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest)


def test_hf_truncated_download_leaves_nothing(hf_env, hf_manifest):
    manifest, _ = hf_manifest
    hf_env.server.truncate(HF_REPO, "model.safetensors", 1000)
    with pytest.raises(CheckpointError, match="downloading checkpoint 'csap_tiny.ade20k' .* failed"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest)
    blobs = hf_env.repo_dir(HF_REPO) / "blobs"
    assert not blobs.exists() or list(blobs.iterdir()) == []


def test_hf_offline_with_empty_cache_is_a_clear_error(hf_env, hf_manifest):
    manifest, _ = hf_manifest
    hf_env.set_offline(True)
    with pytest.raises(CheckpointUnavailableError, match="'csap_tiny.ade20k' is not in the local cache and offline"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest)
    assert hf_env.server.requests == []


def test_a_checkpoint_and_a_model_folder_fail_alike_through_the_one_hub_wrapper(hf_env, hf_manifest):
    """Manifest checkpoints and from_pretrained("org/name") download through csap_zoo.hf_access.hf_download: not
    cached while offline and missing on the Hub are the same error class, with the same words, for both."""
    manifest, _ = hf_manifest
    hf_env.set_offline(True)
    with pytest.raises(CheckpointUnavailableError, match="not in the local cache and offline mode is on") as folder:
        csap_zoo.from_pretrained("zoo-test/not-cached")
    assert "hf-hub:zoo-test/not-cached" in str(folder.value)
    hf_env.set_offline(False)
    missing = dataclasses.replace(manifest.get("csap_tiny.ade20k"), source=HfSource("zoo-test/gone", "0" * 40,
                                                                                    "model.safetensors"))
    manifest.upsert(missing)
    with pytest.raises(CheckpointUnavailableError, match="is missing on the Hub .*stale"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest)
    with pytest.raises(CheckpointUnavailableError, match="is missing on the Hub .*not a csap-zoo model repository"):
        csap_zoo.from_pretrained("zoo-test/gone")


def test_unpublished_and_unknown_checkpoints(hf_env):
    with pytest.raises(CheckpointUnavailableError, match="'csap_tiny.cocostuff' is not published yet"):
        csap_zoo.create_model("csap_tiny.cocostuff", pretrained=True)
    with pytest.raises(ManifestError, match="no checkpoint named 'segnext_tiny.cocostuff'"):
        csap_zoo.create_model("segnext_tiny.cocostuff", pretrained=True)
    assert hf_env.server.requests == []


def test_hf_hub_model_repository(hf_env, source_model, tmp_path):
    folder = source_model.save_pretrained(str(tmp_path / "saved"))
    for name in ("config.json", "model.safetensors"):
        hf_env.server.add_file("zoo-test/saved", name, (folder / name).read_bytes())
    for model in (csap_zoo.from_pretrained("zoo-test/saved"), csap_zoo.create_model("hf-hub:zoo-test/saved")):
        assert same_outputs(model.eval(), source_model)
        assert model.config == source_model.config
    with pytest.raises(CheckpointUnavailableError, match="not a csap-zoo model repository"):
        csap_zoo.from_pretrained("zoo-test/missing")


def test_torch_hub_load_follows_the_manifest(hf_env, hf_manifest, source_model, tmp_path, monkeypatch):
    manifest, _ = hf_manifest
    path = manifest.save(tmp_path / "manifest.json")
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(path))
    model = torch.hub.load(str(REPO), "csap_tiny_ade20k", source="local", pretrained=True).eval()
    assert same_outputs(model, source_model)
    plain = torch.hub.load(str(REPO), "csap_tiny_ade20k", source="local", pretrained=False)
    assert plain.num_classes == 150 and not same_outputs(plain.eval(), source_model)


# ------------------------------------------------------------------ plain URLs (torch.hub-style cache)
@pytest.fixture
def url_manifest(url_server, weights):
    digest = hashlib.sha256(weights).hexdigest()
    filename = f"csap_tiny_ade20k-{digest[:8]}.safetensors"
    url = url_server.add_file(filename, weights)
    manifest = manifest_with("csap_tiny.ade20k", source=UrlSource(url), sha256=None, sha256_prefix=digest[:8])
    return manifest, filename


def test_url_download_verifies_caches_and_loads_offline(url_server, url_manifest, source_model, tmp_path):
    manifest, filename = url_manifest
    cache = tmp_path / "cache"
    model = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=cache)
    assert same_outputs(model.eval(), source_model)
    cached = url_cache_path(manifest.get("csap_tiny.ade20k"), cache)
    pins = [f for f in cache_files(cache) if f.startswith("pins/")]  # a prefix-only entry pins its full sha256
    assert [f for f in cache_files(cache) if f not in pins] == [str(cached.relative_to(cache))]
    assert cached.name == filename and len(pins) == (0 if manifest.get("csap_tiny.ade20k").sha256 else 1)
    assert len(url_server.requests) == 1

    url_server.clear_requests()
    for offline in (False, True):
        again = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=cache,
                                      local_files_only=offline)
        assert same_outputs(again.eval(), source_model)
    assert url_server.requests == []


def test_url_offline_mode_from_environment(url_server, url_manifest, tmp_path, monkeypatch):
    manifest, _ = url_manifest
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    with pytest.raises(CheckpointUnavailableError, match="not in the local cache .* offline mode is on"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=tmp_path / "c")
    assert url_server.requests == []


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_url_bad_downloads_leave_no_file(url_server, url_manifest, tmp_path, damage):
    manifest, filename = url_manifest
    if damage == "corrupt":
        url_server.corrupt(filename)
        error, message = CheckpointIntegrityError, "has sha256 .* expected"
    else:
        url_server.truncate(filename, 5000)
        error, message = CheckpointError, "failed|stopped after"
    cache = tmp_path / "cache"
    with pytest.raises(error, match=f"checkpoint 'csap_tiny.ade20k'.*({message})"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=cache)
    assert cache_files(cache) == []


def test_corrupted_cache_file_is_replaced(url_server, url_manifest, source_model, tmp_path):
    manifest, filename = url_manifest
    cache = tmp_path / "cache"
    cached = url_cache_path(manifest.get("csap_tiny.ade20k"), cache)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    model = csap_zoo.create_model("csap_tiny.ade20k", pretrained=True, manifest=manifest, cache_dir=cache)
    assert same_outputs(model.eval(), source_model)


# ------------------------------------------------------------------ ImageNet backbone for a bare architecture
def test_bare_architecture_loads_the_imagenet_backbone(url_server, tmp_path):
    torch.manual_seed(7)
    imagenet = timm.create_model("mscan_tiny").eval()
    path = tmp_path / "mscan_t.pth"
    torch.save({"state_dict": imagenet.state_dict()}, path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    url = url_server.add_file(f"mscan_t_20230227-{digest[:8]}.pth", data)
    manifest = manifest_with("mscan_tiny.in1k", source=UrlSource(url), sha256_prefix=digest[:8])

    model = csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=5, manifest=manifest,
                                  cache_dir=tmp_path / "cache").eval()
    assert model.num_classes == 5
    with torch.no_grad():
        expected = imagenet.forward_intermediates(X, intermediates_only=True)
        got = model.backbone(X)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": os.system}, path)
    with pytest.raises(Exception, match="weights-only|Pickled objects"):
        csap_zoo.create_model("csap_tiny", pretrained=str(path))
