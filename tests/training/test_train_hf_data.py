"""Training on a Hugging Face dataset (``dataset="hf"``): the same first-iteration batches and the same validation
metrics as the same images laid out as a folder dataset; its config fields and errors."""
from __future__ import annotations

import pytest
import torch

from _helpers import save_folder_dataset_as_hf

from .conftest import tiny_config

datasets = pytest.importorskip("datasets")

from csap_zoo.cli import main  # noqa: E402
from csap_zoo.training import TrainConfig  # noqa: E402
from csap_zoo.training.data import build_datasets, train_loader  # noqa: E402
from csap_zoo.training.trainer import Trainer  # noqa: E402
from csap_zoo.validation import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def shapes_hf(tiny_shapes, tmp_path_factory):
    """The tiny shapes folder dataset as a save_to_disk DatasetDict (splits train and validation, columns img and
    seg)."""
    root = tmp_path_factory.mktemp("shapes_hf") / "dict"
    save_folder_dataset_as_hf(tiny_shapes, root, columns=("img", "seg"))
    return root


def _first_batch_and_validation(config):
    trainer = Trainer(config)
    try:
        images, masks = next(iter(train_loader(config, trainer.env, trainer.train_set, 0)))
        return images, masks, trainer.evaluate(), trainer
    finally:
        trainer.close()


def test_first_batches_and_validation_equal_the_folder_dataset(tiny_shapes, shapes_hf, tmp_path):
    folder = tiny_config(tiny_shapes, tmp_path / "folder", test_size=None)
    hf = tiny_config(shapes_hf, tmp_path / "hf", test_size=None, dataset="hf", image_column="img",
                     mask_column="seg", classes_file=str(tiny_shapes / "classes.txt"))
    f_images, f_masks, f_metrics, f_trainer = _first_batch_and_validation(folder)
    h_images, h_masks, h_metrics, h_trainer = _first_batch_and_validation(hf)
    assert len(h_trainer.train_set) == 16 and len(h_trainer.val_set) == 4
    assert h_trainer.info.class_names == f_trainer.info.class_names
    assert torch.equal(h_images, f_images) and torch.equal(h_masks, f_masks)
    assert h_metrics == f_metrics and f_metrics["mIoU"] is not None


def test_config_fields_classes_and_errors(tiny_shapes, shapes_hf, tmp_path, capsys):
    with pytest.raises(ConfigError, match="data_root must name the Hugging Face dataset"):
        TrainConfig(dataset="hf")
    config = tiny_config(shapes_hf, tmp_path, dataset="hf", image_column="img", mask_column="seg")
    with pytest.raises(ConfigError, match="classes_file .*dataset hf needs its class names"):
        build_datasets(config)
    # a built-in dataset_name gives its classes (scene_parse_150 is ADE20K: dataset_name ade20k, reduce_zero_label)
    train, val = build_datasets(config.replace(dataset_name="ade20k", reduce_zero_label=True, val_split="train"))
    assert train.num_classes == val.num_classes == 150 and val.name.endswith("[train]")
    with pytest.raises(ValueError, match="has no split 'test'; its splits: train, validation"):
        build_datasets(config.replace(dataset_name="ade20k", val_split="test"))
    assert main(["train", "--dataset", "hf", "--data", str(shapes_hf), "--split", "train", "--val-split",
                 "validation", "--image-column", "img", "--mask-column", "seg", "--print-config"]) == 0
    printed = capsys.readouterr().out
    for line in ("dataset: hf", f"data_root: {shapes_hf}", "train_split: train", "val_split: validation",
                 "image_column: img", "mask_column: seg"):
        assert line in printed, line
