"""Hugging Face datasets as segmentation data (csap_zoo.data.hf_datasets and ``--dataset hf``): each source decodes
to the same items as the same images laid out as a folder dataset, eval gives the same metrics, and every bad
column, split, source or label is one clear error. The datasets are built here; nothing touches the network."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

datasets = pytest.importorskip("datasets")

import csap_zoo  # noqa: E402
from csap_zoo.cli import main  # noqa: E402
from csap_zoo.data import custom_dataset_info, open_dataset  # noqa: E402
from csap_zoo.data.hf_datasets import HFDataset, open_hf_dataset  # noqa: E402
from csap_zoo.errors import UsageError  # noqa: E402

CLASSES = ["sky", "road", "car"]
INFO = custom_dataset_info(CLASSES)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("P")  # palette masks: the stored indices are the labels
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 32x40 image/mask pairs (labels 0..2 and 255 ignored; one palette mask, one 16-bit mask) as a folder
    dataset, a save_to_disk DatasetDict, a save_to_disk Dataset and parquet files in two Hub layouts."""
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(3)]
    masks = [rng.integers(0, 3, (32, 40)).astype(np.uint8) for _ in range(3)]
    masks[0][:4] = 255
    encoded_masks = [_png(masks[0]), _png(masks[1], "P"), _png(masks[2].astype(np.uint16))]
    for i, (image, mask) in enumerate(zip(images, encoded_masks)):
        for folder, blob in (("images", _png(image)), ("masks", mask)):
            (root / "folder" / folder).mkdir(parents=True, exist_ok=True)
            (root / "folder" / folder / f"{i}.png").write_bytes(blob)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image(),
                                  "scene_category": datasets.ClassLabel(names=["street", "field"])})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(im), "path": None} for im in images],
         "annotation": [{"bytes": m, "path": None} for m in encoded_masks], "scene_category": [0, 1, 0]},
        features=features)
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(str(root / "dict"))
    table.save_to_disk(str(root / "single"))
    (root / "hub" / "data").mkdir(parents=True)
    table.to_parquet(str(root / "hub" / "data" / "validation-00000-of-00001.parquet"))
    (root / "bysplit" / "val").mkdir(parents=True)
    table.to_parquet(str(root / "bysplit" / "val" / "part-0.parquet"))
    (root / "named" / "default").mkdir(parents=True)  # a configuration's folder of shards, and a split file
    table.to_parquet(str(root / "named" / "default" / "validation-00000-of-00001.parquet"))
    table.to_parquet(str(root / "named" / "train.parquet"))
    return root


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_every_source_decodes_to_the_folder_dataset_items(data, tmp_path, reduce_zero_label):
    folder = open_dataset("folder", data / "folder", info=INFO, reduce_zero_label=reduce_zero_label)
    sources = {"dict": {}, "single": {}, "hub": {}, "bysplit": {}, "dict-train": {"split": "train"}, "named": {},
               "named-train": {"split": "train"}}
    for source, options in sources.items():
        ds = open_hf_dataset(data / source.split("-")[0], info=INFO, reduce_zero_label=reduce_zero_label,
                             cache_dir=tmp_path, **options)
        assert len(ds) == len(folder) == 3, source
        for i in range(3):
            (image, mask), (want_image, want_mask) = ds[i], folder[i]
            assert image.dtype == np.uint8 and image.shape == (32, 40, 3) and mask.dtype == np.int64, source
            assert np.array_equal(image, want_image) and np.array_equal(mask, want_mask), (source, i)
    # a table whose cells point at files (not embedded) reads the files
    by_path = datasets.Dataset.from_dict(
        {"image": [str(folder.image_path(i)) for i in range(3)], "annotation": [str(folder.mask_path(i))
                                                                                 for i in range(3)]},
        features=datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()}))
    ds = HFDataset(by_path, INFO, "files", reduce_zero_label=reduce_zero_label)
    assert all(np.array_equal(a, b) for i in range(3) for a, b in zip(ds[i], folder[i]))


def test_eval_on_a_save_to_disk_dataset_equals_the_folder_dataset(data, tmp_path, capsys):
    torch.manual_seed(1)
    save_file(csap_zoo.create_model("csap_tiny", num_classes=3).state_dict(), str(tmp_path / "w.safetensors"))
    common = ["--model", "csap_tiny", "--checkpoint", str(tmp_path / "w.safetensors"), "--classes",
              str(data / "classes.txt"), "--resize", "0", "--no-progress"]
    assert main(["eval", "--dataset", "folder", "--data", str(data / "folder"), "--json", str(tmp_path / "f.json"),
                 *common]) == 0
    assert main(["eval", "--dataset", "hf", "--data", str(data / "dict"), "--json", str(tmp_path / "h.json"),
                 *common]) == 0
    folder, hf = (json.loads((tmp_path / name).read_text()) for name in ("f.json", "h.json"))
    assert folder["protocol"]["dataset"] == "folder" and hf["protocol"]["dataset"] == "hf"
    assert hf["protocol"]["image_column"] == "image" and hf["protocol"]["mask_column"] == "annotation"
    for report in (folder, hf):
        del report["protocol"]
    assert hf == folder and hf["images"] == 3
    # without --classes the model's classes name them; a bad column fails with exit status 2, naming the columns
    assert main(["eval", "--dataset", "hf", "--data", str(data / "hub"), "--model", "csap_tiny", "--checkpoint",
                 str(tmp_path / "w.safetensors"), "--mask-column", "label", "--no-progress"]) == 2
    assert "no column 'label' (--mask-column); its columns: image (Image), annotation (Image)" in \
        capsys.readouterr().err
    assert main(["eval", "--dataset", "cityscapes", "--data", str(data), "--reduce-zero-label", *common]) == 2
    assert "--reduce-zero-label is for folder and hf datasets" in capsys.readouterr().err


def _bad_labels(data, tmp_path):
    table = datasets.load_from_disk(str(data / "dict"))["validation"]
    table = table.map(lambda row: {"annotation": {"bytes": _png(np.full((32, 40), 3, np.uint8)), "path": None}},
                      features=table.features)
    table.save_to_disk(str(tmp_path / "bad"))
    return tmp_path / "bad"


@pytest.mark.parametrize("case, fragments", [
    ("split", ["has no split 'test'; its splits: train, validation (choose one with --split)"]),
    ("image column", ["no column 'img' (--image-column); its columns: image (Image), annotation (Image), "
                      "scene_category (ClassLabel)"]),
    ("not images", ["column 'scene_category' (--mask-column) holds ClassLabel, not images; its image columns: "
                    "image, annotation"]),
    ("single with split", ["holds one Dataset without splits", "leave --split out"]),
    ("no dataset", ["neither a save_to_disk folder", "nor a folder of parquet files"]),
    ("no default split", ["there is no 'validation' split; its splits: a, b"]),
    ("not a hub id", ["not a folder, and not a Hub dataset id"]),
    ("labels", ["row 0 column 'annotation': mask labels [3] are outside the class range 0..2",
                "if stored 0 means 'other', as in ADE20K and scene_parse_150: use reduce_zero_label"]),
    ("no package", ['pip install "csap-zoo[hf-datasets]"']),
    ("folder reader", ["is read by csap_zoo.data.hf_datasets: open_hf_dataset"]),
])
def test_each_bad_input_is_one_clear_error(data, tmp_path, monkeypatch, case, fragments):
    source, options = data / "dict", {}
    if case == "split":
        options = {"split": "test"}
    elif case == "image column":
        options = {"image_column": "img"}
    elif case == "not images":
        options = {"mask_column": "scene_category"}
    elif case == "single with split":
        source, options = data / "single", {"split": "validation"}
    elif case == "no dataset":
        source = data / "folder"
    elif case == "no default split":
        for split in ("a", "b"):
            (tmp_path / "pq" / split).mkdir(parents=True)
            (tmp_path / "pq" / split / "x.parquet").write_bytes((data / "bysplit" / "val" / "part-0.parquet")
                                                                 .read_bytes())
        source = tmp_path / "pq"
    elif case == "not a hub id":
        source = tmp_path / "missing" / "folder" / "x"
    elif case == "no package":
        monkeypatch.setitem(sys.modules, "datasets", None)
    error = ValueError if case in ("labels", "folder reader") else UsageError
    with pytest.raises(error) as caught:
        if case == "labels":
            open_hf_dataset(_bad_labels(data, tmp_path), info=INFO)[0]
        elif case == "folder reader":
            open_dataset("hf", data / "dict")
        else:
            open_hf_dataset(source, info=INFO, cache_dir=tmp_path / "cache", **options)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_the_extra_names_the_package_and_dev_installs_it():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["hf-datasets"] == ["datasets>=2.19"] and "datasets>=2.19" in extras["dev"]
