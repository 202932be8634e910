"""The bundled demo checkpoint works out of the box, offline: `csap-zoo predict <example> --model csap_tiny.shapes`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import csap_zoo
from csap_zoo.cli import main
from csap_zoo.data.io import read_image, read_mask
from csap_zoo.data.synthetic import SHAPES_CLASSES, render_shapes_sample
from csap_zoo.evaluation import Evaluator
from csap_zoo.hub import default_manifest
from csap_zoo.hub.cache import sha256_of

DEMO = Path(csap_zoo.__file__).parent / "assets" / "demo"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "empty-cache"))


def test_bundle_matches_its_manifest_entry_and_is_small():
    entry = default_manifest().get("csap_tiny.shapes")
    weights = DEMO / "model.safetensors"
    assert weights.stat().st_size <= 10_000_000 and entry.size_bytes == weights.stat().st_size
    assert entry.sha256 == sha256_of(weights) and entry.format == "csap-safetensors"
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model"]["num_classes"] == entry.num_classes == len(SHAPES_CLASSES)
    assert config["data"]["class_names"] == list(SHAPES_CLASSES)
    assert entry.metrics["reproduced"]["mIoU"] >= 80


def test_main_job_command_works_offline(offline, tmp_path, capsys):
    example = DEMO / "example.png"
    assert main(["predict", str(example), "--model", "csap_tiny.shapes", "--pretrained", "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    overlay = read_image(tmp_path / "out" / "overlays" / "example.png")
    labels = read_mask(tmp_path / "out" / "labels" / "example.png")
    assert labels.shape == (256, 256) and overlay.shape[0] == 256
    # the example is a generated image outside the training set: compare with its known ground truth
    _, truth = render_shapes_sample(424242, (256, 256), max_shapes=5)
    evaluator = Evaluator(6)
    evaluator.update(labels, truth)
    assert evaluator.compute().aAcc > 0.9


def test_loads_as_fp32_with_class_names(offline):
    model = csap_zoo.create_model("csap_tiny.shapes", pretrained=True)
    assert all(p.dtype.is_floating_point and p.dtype == p.new_zeros(()).float().dtype for p in model.parameters())
    seg = csap_zoo.Segmenter(model)
    assert seg.dataset_info.class_names == SHAPES_CLASSES
    folder = csap_zoo.from_pretrained(DEMO)
    assert folder.metrics["mIoU"] >= 80
    image = read_image(DEMO / "example.png")
    assert np.array_equal(seg.predict(image), csap_zoo.Segmenter(folder).predict(image))
