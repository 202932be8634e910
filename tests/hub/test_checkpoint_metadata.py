"""create_model(name, pretrained=...) carries the checkpoint's class names and palette, like from_pretrained."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

import csap_zoo
from csap_zoo.hub import UrlSource, default_manifest
from csap_zoo.manifest import load_manifest

DEMO = Path(csap_zoo.__file__).parent / "assets" / "demo"


def test_the_package_demo_carries_its_folders_classes(monkeypatch, tmp_path):
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "empty-cache"))
    model = csap_zoo.create_model("csap_tiny.shapes", pretrained=True)
    folder = csap_zoo.from_pretrained(DEMO)
    assert folder.data_config.class_names is not None and folder.data_config.palette is not None
    assert model.data_config.class_names == folder.data_config.class_names
    assert model.data_config.palette == folder.data_config.palette
    assert model.data_config == folder.data_config  # normalisation and test size agree as well
    # a different class count re-initialises the classifier, and the names no longer belong to it
    with pytest.warns(UserWarning, match="re-initialised"):
        reset = csap_zoo.create_model("csap_tiny.shapes", pretrained=True, num_classes=4)
    assert reset.data_config.class_names is None and reset.data_config.palette is None


def test_benchmark_checkpoints_carry_their_datasets_metadata(url_server, tmp_path):
    torch.manual_seed(0)
    source = csap_zoo.create_model("csap_tiny.cityscapes").eval()
    weights = safetensors_bytes({k: v.contiguous() for k, v in source.state_dict().items()})
    manifest = load_manifest(default_manifest().path)
    entry = manifest.get("csap_tiny.cityscapes")
    manifest.upsert(dataclasses.replace(
        entry, status="published", source=UrlSource(url_server.add_file("csap_tiny_cityscapes.safetensors", weights)),
        sha256=hashlib.sha256(weights).hexdigest(), sha256_prefix=None, size_bytes=len(weights)))
    model = csap_zoo.create_model("csap_tiny.cityscapes", pretrained=True, manifest=manifest,
                                  cache_dir=tmp_path / "cache")
    info = csap_zoo.data.get_dataset_info("cityscapes")
    assert model.data_config.class_names == list(info.class_names)
    assert model.data_config.palette == list(info.palette)
    assert csap_zoo.Segmenter(model).dataset_info.class_names == info.class_names

    # the same weights as a local file under the dataset's name
    (tmp_path / "w.safetensors").write_bytes(weights)
    local = csap_zoo.create_model("csap_tiny.cityscapes", pretrained=tmp_path / "w.safetensors")
    assert local.data_config.class_names == list(info.class_names)
    # saved and loaded again, the names travel in the folder
    again = csap_zoo.from_pretrained(model.save_pretrained(str(tmp_path / "saved")))
    assert again.data_config.class_names == model.data_config.class_names


def test_classes_that_do_not_fit_are_left_out(tmp_path):
    torch.manual_seed(0)
    odd = csap_zoo.create_model("csap_tiny", num_classes=5)
    save_file(odd.state_dict(), str(tmp_path / "w.safetensors"))
    model = csap_zoo.create_model("csap_tiny.cityscapes", pretrained=tmp_path / "w.safetensors")
    assert model.num_classes == 5 and model.data_config.class_names is None
