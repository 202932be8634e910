"""predict_paths' PNGs: palette label maps that viewers show in the dataset's colours, overlays with outlines."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import csap_zoo
import csap_zoo.data.io
import csap_zoo.inference
import csap_zoo.predict
from csap_zoo.data.io import read_image, read_mask
from csap_zoo.data.png import save_png
from csap_zoo.inference import Segmenter
from csap_zoo.predict import predict_paths
from csap_zoo.visualize import boundaries

from _helpers import ManyClasses

DEMO = Path(csap_zoo.__file__).parent / "assets" / "demo"


def _inputs(root, sizes=((70, 90), (33, 120), (121, 47))):
    root.mkdir(parents=True)
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, ((xx // 9 + yy // 11) % 2) * 200], axis=-1)
        rgb = rgb + np.random.default_rng(k).integers(0, 40, (h, w, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(root / f"img{k}.png")
    return sorted(root.iterdir())


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows, so that every image is written in many of them."""
    monkeypatch.setattr(csap_zoo.inference.bands, "BAND_ELEMENTS", 4096)
    monkeypatch.setattr(csap_zoo.predict, "_WRITE_BAND_PIXELS", 700)
    monkeypatch.setattr(csap_zoo.data.io, "_BAND_PIXELS", 3000)


def test_palette_label_pngs_hold_the_class_indices_and_the_dataset_colours(tmp_path, small_bands):
    torch.manual_seed(0)
    seg = Segmenter(csap_zoo.create_model("csap_tiny", num_classes=4).eval(), resize=(64, 48))
    files = _inputs(tmp_path / "in")
    predict_paths(seg, tmp_path / "in", tmp_path / "gray", progress=False)
    predict_paths(seg, tmp_path / "in", tmp_path / "colour", progress=False, palette_labels=True)
    palette = seg.dataset_info.palette
    for path in files:
        gray = np.asarray(Image.open(tmp_path / "gray" / "labels" / f"{path.stem}.png"))
        written = tmp_path / "colour" / "labels" / f"{path.stem}.png"
        assert written.read_bytes()[12:16] == b"IHDR" and written.read_bytes()[37:41] == b"PLTE"
        reference = save_png(gray, tmp_path / "pil" / f"{path.stem}.png", palette=palette)
        with Image.open(written) as streamed, Image.open(reference) as pil:
            assert streamed.mode == "P"
            np.testing.assert_array_equal(np.asarray(streamed), gray)  # the values are the class indices
            np.testing.assert_array_equal(np.asarray(streamed.convert("RGB")), np.asarray(pil.convert("RGB")))
            assert streamed.getpalette()[:3 * len(palette)] == [c for colour in palette for c in colour]
        np.testing.assert_array_equal(read_mask(written), gray)
    # the overlays do not depend on how the labels are stored
    for path in files:
        np.testing.assert_array_equal(read_image(tmp_path / "gray" / "overlays" / f"{path.stem}.png"),
                                      read_image(tmp_path / "colour" / "overlays" / f"{path.stem}.png"))


def test_label_maps_above_255_stay_16_bit_grayscale_with_palette_labels(tmp_path, small_bands):
    seg = Segmenter(ManyClasses(), resize=(100, 70))
    files = _inputs(tmp_path / "in")
    predict_paths(seg, tmp_path / "in", tmp_path / "out", progress=False, legend=False, palette_labels=True)
    modes = set()
    for path in files:
        labels = seg.predict(path)
        with Image.open(tmp_path / "out" / "labels" / f"{path.stem}.png") as written:
            assert written.mode == ("P" if labels.max() <= 255 else "I;16"), path.stem
            np.testing.assert_array_equal(np.asarray(written).astype(np.int64), labels)
            modes.add(written.mode)
    assert "I;16" in modes


def test_demo_overlays_outline_the_predicted_regions(tmp_path, monkeypatch):
    """The demo's objects have hues near their class colours; its overlay still differs from the input: the
    boundaries of the predicted regions are white."""
    monkeypatch.setenv("CSAP_ZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seg = Segmenter(csap_zoo.from_pretrained(DEMO))
    predict_paths(seg, DEMO / "example.png", tmp_path / "out", progress=False, palette_labels=True)
    labels = read_mask(tmp_path / "out" / "labels" / "example.png")
    image = read_image(DEMO / "example.png").astype(np.int64)
    drawn = read_image(tmp_path / "out" / "overlays" / "example.png")[:, :image.shape[1]].astype(np.int64)
    edges = boundaries(labels, seg.dataset_info.ignore_index)
    assert edges.sum() > 300 and (drawn[edges] == 255).all()
    assert np.abs(drawn - image)[edges].mean() > 100
    with Image.open(tmp_path / "out" / "labels" / "example.png") as written:
        assert written.mode == "P" and written.getpalette()[:18] == [c for rgb in seg.dataset_info.palette
                                                                      for c in rgb]
