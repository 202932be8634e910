"""One dataset opener (csap_zoo.data.open_dataset / open_train_val) for training, evaluation and the CLI, and one
classes-file grammar for all of them."""
from __future__ import annotations

import pytest

import csap_zoo
from csap_zoo.cli import main
from csap_zoo.data import (
    DEFAULT_SPLITS, FolderDataset, open_dataset, open_train_val, read_classes_file,
)
from csap_zoo.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE, generate_shapes_dataset
from csap_zoo.inference import Segmenter


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """The training layout: root/{train,val}/{images,masks} + root/classes.txt (5 train, 3 val, 64x64)."""
    root = tmp_path_factory.mktemp("shapes_layout")
    generate_shapes_dataset(root, num_train=5, num_val=3, size=(64, 64), seed=1)
    return root


@pytest.fixture(scope="module")
def demo_model():
    return csap_zoo.create_model("csap_tiny.shapes", pretrained=True)


def test_folder_split_reads_the_training_layout_with_root_classes_txt(shapes_root):
    ds = open_dataset("folder", shapes_root, split="val")
    assert isinstance(ds, FolderDataset) and len(ds) == 3
    assert ds.samples[0].image == shapes_root / "val" / "images" / "00000.png"
    assert ds.info.class_names == SHAPES_CLASSES and ds.info.palette == SHAPES_PALETTE
    assert len(open_dataset("folder", shapes_root, split="train")) == 5
    assert len(open_dataset("folder", shapes_root)) == 3  # no split: the evaluation split of that layout


def test_folder_classes_file_and_missing_classes(shapes_root, tmp_path):
    (tmp_path / "c.txt").write_text("# my classes\n" + "\n".join(f"k{i} {i} {i} {i}" for i in range(6)) + "\n")
    ds = open_dataset("folder", shapes_root, split="val", classes_file=tmp_path / "c.txt")
    assert ds.info.class_names == tuple(f"k{i}" for i in range(6)) and ds.info.palette[2] == (2, 2, 2)
    (tmp_path / "data" / "val" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="classes file not found"):
        open_dataset("folder", tmp_path / "data", split="val")


def test_train_val_splits_and_their_defaults_come_from_data(shapes_root):
    train, val = open_train_val("folder", shapes_root, dataset_name="shapes")
    assert (len(train), len(val)) == (5, 3) and train.info is val.info and train.info.name == "shapes"
    train, val = open_train_val("folder", shapes_root, train_split="val", val_split="missing")
    assert len(train) == 3 and val is None  # no validation folder: no validation reader
    assert DEFAULT_SPLITS["ade20k"] == ("training", "validation")
    assert DEFAULT_SPLITS["cityscapes"] == ("train", "val")
    assert DEFAULT_SPLITS["cocostuff"] == ("train2017", "val2017")
    with pytest.raises(ValueError, match="needs data_root"):
        open_train_val("ade20k", None)


def test_training_reads_its_datasets_through_the_data_opener(shapes_root):
    from csap_zoo.training.data import build_datasets
    from csap_zoo.training import get_preset

    train, val = build_datasets(get_preset("shapes-demo").replace(data_root=str(shapes_root)))
    expected_train, expected_val = open_train_val("folder", shapes_root, dataset_name="shapes")
    assert train.samples == expected_train.samples and val.samples == expected_val.samples
    assert train.info == expected_train.info


def test_the_classes_parser_has_one_home():
    from csap_zoo import training
    from csap_zoo.data import metadata
    from csap_zoo.training import config

    assert metadata.read_classes_file is read_classes_file
    assert not hasattr(config, "read_classes_file") and not hasattr(training, "read_classes_file")  # no second name


def test_cli_eval_folder_reads_the_training_layout(shapes_root, demo_model, capsys):
    code = main(["eval", "--model", "csap_tiny.shapes", "--pretrained", "--dataset", "folder", "--data-root",
                 str(shapes_root), "--split", "val", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHAPES_CLASSES)
    dataset = open_dataset("folder", shapes_root, split="val")
    seg = Segmenter(demo_model, resize=tuple(demo_model.data_config.test_size))
    expected = csap_zoo.evaluate(seg, dataset, progress=False)
    assert expected.summary() in out


def test_cli_eval_classes_take_colours_and_comments(shapes_root, tmp_path, capsys):
    lines = ["# the shapes classes, with their colours"]
    lines += [f"{name} {r} {g} {b}  # class {i}" for i, (name, (r, g, b)) in
              enumerate(zip(SHAPES_CLASSES, SHAPES_PALETTE))]
    (tmp_path / "classes.txt").write_text("\n".join(lines) + "\n")
    code = main(["eval", "--model", "csap_tiny.shapes", "--pretrained", "--dataset", "folder", "--data",
                 str(shapes_root / "val"), "--classes", str(tmp_path / "classes.txt"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "triangle" in out and "230 60 60" not in out and "# the shapes" not in out


def test_keep_ratio_rule_is_shared():
    from csap_zoo.inference import windows
    from csap_zoo.data import transforms

    assert windows.keep_ratio_size is transforms.keep_ratio_size
    assert windows.keep_ratio_size(100, 150, (2048, 512)) == (512, 768)
