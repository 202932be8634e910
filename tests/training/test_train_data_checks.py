"""Bad datasets are reported before the first training step, listing every offending file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from csap_zoo.data import DatasetError
from csap_zoo.data.png import save_png
from csap_zoo.training import Trainer

from .conftest import tiny_config


@pytest.fixture
def data(tiny_shapes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    return root


def _trainer_error(root, tmp_path, exc=DatasetError, **changes):
    steps = []
    with pytest.raises(exc) as info:
        Trainer(tiny_config(root, tmp_path / "run", **changes), hooks=[lambda *a: steps.append(a)])
    assert not steps
    assert not (tmp_path / "run" / "checkpoints").exists()
    return str(info.value)


def test_unpaired_images_and_masks_are_listed(data, tmp_path):
    (data / "train" / "masks" / "00003.png").unlink()
    shutil.copy(data / "train" / "masks" / "00004.png", data / "train" / "masks" / "extra.png")
    message = _trainer_error(data, tmp_path, exc=ValueError)
    assert "00003.png" in message and "extra.png" in message and "unpaired" in message


def test_unreadable_images_bad_labels_and_size_mismatch_are_all_listed(data, tmp_path):
    (data / "train" / "images" / "00001.png").write_bytes(b"not a png at all")
    save_png(np.full((48, 48), 7, np.uint8), data / "train" / "masks" / "00002.png")  # 6 classes: 7 is invalid
    mask = np.zeros((48, 48), np.uint8)
    mask[0, 0] = 255  # the ignore value is fine
    save_png(mask, data / "train" / "masks" / "00005.png")
    save_png(np.zeros((40, 48), np.uint8), data / "val" / "masks" / "00000.png")
    message = _trainer_error(data, tmp_path)
    assert "3 problem(s)" in message
    assert "train/images/00001.png" in message and "cannot read" in message
    assert "train/masks/00002.png" in message and "[7]" in message
    assert "val/masks/00000.png" in message and "size" in message
    assert "00005.png" not in message


def test_missing_folders_and_classes_file(data, tmp_path):
    (data / "classes.txt").unlink()
    assert "classes file not found" in _trainer_error(data, tmp_path, exc=FileNotFoundError)
    shutil.rmtree(data / "train" / "masks")
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="masks folder not found"):
        Trainer(tiny_config(data, tmp_path / "run", classes_file=str(tmp_path / "c.txt")))


def test_labels_beyond_the_class_count_with_a_custom_ignore_index(data, tmp_path):
    mask = np.zeros((48, 48), np.uint8)
    mask[:4] = 100  # the ignore value of this dataset
    save_png(mask, data / "train" / "masks" / "00000.png")
    mask[:4] = 255  # no longer the ignore value: out of range
    save_png(mask, data / "train" / "masks" / "00001.png")
    message = _trainer_error(data, tmp_path, ignore_index=100)
    assert "1 problem(s)" in message and "00001.png" in message and "[255]" in message


@pytest.mark.parametrize("validate", ["full", "pairs"])
def test_a_training_set_without_a_labelled_pixel_is_refused(data, tmp_path, validate):
    for mask in (data / "train" / "masks").iterdir():
        save_png(np.full((48, 48), 255, np.uint8), mask)  # every pixel is the ignore value
    message = _trainer_error(data, tmp_path, validate=validate)
    assert "no labelled pixel" in message and "16" in message and "255" in message


def test_masks_that_reduce_zero_label_turns_into_ignore_only_are_refused(data, tmp_path):
    for mask in (data / "train" / "masks").iterdir():
        save_png(np.zeros((48, 48), np.uint8), mask)  # 0 becomes the ignore value with reduce_zero_label
    message = _trainer_error(data, tmp_path, reduce_zero_label=True)
    assert "no labelled pixel" in message and "reduce_zero_label" in message


def test_one_labelled_mask_is_enough(data, tmp_path):
    for i, mask in enumerate(sorted((data / "train" / "masks").iterdir())):
        values = np.full((48, 48), 255, np.uint8)
        if i == 15:
            values[10:20, 10:20] = 1
        save_png(values, mask)
    for validate in ("full", "pairs"):
        Trainer(tiny_config(data, tmp_path / validate, validate=validate)).close()


@pytest.mark.parametrize("validate", ["full", "pairs"])
def test_a_validation_set_without_a_labelled_pixel_is_refused(data, tmp_path, validate):
    for mask in (data / "val" / "masks").iterdir():
        save_png(np.full((48, 48), 255, np.uint8), mask)
    message = _trainer_error(data, tmp_path, validate=validate)
    assert "validation set: no labelled pixel" in message and "metric would be undefined" in message
