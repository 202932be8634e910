"""Segmenter's defaults agree with the command line: the checkpoint's own test size, and float tensors on a
declared scale (``input_range``) with warnings that point at the caller's line."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import csap_zoo
from csap_zoo.cli import main
from csap_zoo.data.io import read_image, read_mask
from csap_zoo.inference import AUTO_RESIZE, InferenceConfig, Segmenter

DEMO = Path(csap_zoo.__file__).parent / "assets" / "demo"
EXAMPLE = DEMO / "example.png"


@pytest.fixture(scope="module")
def demo():
    return csap_zoo.from_pretrained(DEMO)


def _cli_labels(tmp_path: Path, *options: str) -> np.ndarray:
    out = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh folder per run: predict skips outputs that exist
    assert main(["predict", str(EXAMPLE), "--model", str(DEMO), "--out", str(out), "--no-progress", *options]) == 0
    return read_mask(out / "labels" / "example.png")


def test_segmenter_default_is_the_command_lines_prediction(demo, tmp_path):
    seg = Segmenter(demo)
    assert seg.config.resize == tuple(demo.data_config.test_size) == (128, 128)
    np.testing.assert_array_equal(seg.predict(str(EXAMPLE)), _cli_labels(tmp_path))


def test_native_size_is_asked_for_with_resize_none(demo, tmp_path):
    assert InferenceConfig().resize == AUTO_RESIZE
    native = Segmenter(demo, resize=None)
    assert native.config.resize is None
    image = read_image(EXAMPLE)
    labels = native.predict(image)
    assert (labels != Segmenter(demo).predict(image)).sum() > 0  # 256x256 native vs the 128x128 test size
    np.testing.assert_array_equal(labels, _cli_labels(tmp_path, "--resize", "0"))
    np.testing.assert_array_equal(Segmenter(demo, InferenceConfig(resize=None)).predict(image), labels)


def test_a_model_without_a_test_size_runs_at_native_size(tiny):
    assert tiny.data_config.test_size is None
    assert Segmenter(tiny).config.resize is None
    with pytest.raises(ValueError, match="resize must be"):
        InferenceConfig(resize="model")


def test_dataset_protocols_and_explicit_resizes_win_over_the_checkpoints_size(demo, tmp_path):
    assert Segmenter(demo, InferenceConfig.for_dataset("cityscapes")).config.resize is None
    assert Segmenter(demo, InferenceConfig.for_dataset("ade20k")).config.resize == (2048, 512)
    assert Segmenter(demo, resize=(96, 96)).config.resize == (96, 96)
    image = read_image(EXAMPLE)
    # --resize and --max-pixels on the command line keep their meaning next to the checkpoint's test size
    np.testing.assert_array_equal(_cli_labels(tmp_path, "--resize", "96", "96"),
                                  Segmenter(demo, resize=(96, 96)).predict(image))
    np.testing.assert_array_equal(_cli_labels(tmp_path, "--max-pixels", "0"), Segmenter(demo).predict(image))


# ---------------------------------------------------------------------- float inputs on another scale
def test_input_range_maps_unit_floats_onto_0_255(tiny):
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(1))
    expected = Segmenter(tiny).predict(image * 255)
    unit = Segmenter(tiny, input_range=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "values in [0, 1]" warning when the range is declared
        np.testing.assert_array_equal(unit.predict(image), expected)
        np.testing.assert_array_equal(unit.predict(image.unsqueeze(0))[0], expected)
        np.testing.assert_array_equal(Segmenter(tiny, input_range=(-1, 1)).predict(image * 2 - 1), expected)
    # float numpy arrays follow the same range (their 0-255 values are rounded to 8 bits, as without a range)
    array = (image * 255).round().permute(1, 2, 0).numpy().astype(np.float32) / 255
    np.testing.assert_array_equal(unit.predict(array), Segmenter(tiny).predict(array * 255))
    # integer inputs keep their own scale
    as_uint8 = (image * 255).round().to(torch.uint8)
    np.testing.assert_array_equal(unit.predict(as_uint8), Segmenter(tiny).predict(as_uint8))


@pytest.mark.parametrize("bad", [(1, 1), (0,), "0-1", (0, float("inf"))])
def test_input_range_is_checked(tiny, bad):
    with pytest.raises(ValueError, match="input_range"):
        Segmenter(tiny, input_range=bad)


def test_out_of_range_values_warn_at_the_callers_line(tiny):
    seg = Segmenter(tiny, input_range=(0, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg.predict(torch.full((3, 32, 32), 200.0))
    assert [w.filename for w in caught] == [__file__] and "outside input_range=(0, 1)" in str(caught[0].message)


def test_unit_float_warning_points_at_the_callers_line(tiny):
    seg = Segmenter(tiny)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg.predict(image)
        seg(image.unsqueeze(0))
        seg.predict([image])
        seg.predict_labels(image)
        seg.decode_raw(image, None)
        seg.predict(image.permute(1, 2, 0).numpy())  # a float array in [0, 1] too
    assert len(caught) == 6
    for w in caught:
        assert w.filename == __file__, (w.filename, w.lineno)
        assert "input_range=(0, 1)" in str(w.message)
