"""Dataset readers: layouts, pairing, up-front validation, mask checks."""
import numpy as np
import pytest
from PIL import Image

from csap_zoo.data import (
    ADE20KDataset, CityscapesDataset, COCOStuffDataset, FolderDataset, custom_dataset_info, open_dataset,
)


def _img(path, h=6, w=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def _mask(path, values, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(values)
    Image.fromarray(arr.astype(np.uint8) if mode == "L" else arr.astype(np.uint16)).save(path)


def _ade(root, masks):
    base = root / "ADEChallengeData2016"
    for i, m in enumerate(masks):
        _img(base / "images" / "validation" / f"ADE_val_{i:08d}.jpg", *np.asarray(m).shape)
        _mask(base / "annotations" / "validation" / f"ADE_val_{i:08d}.png", m)
    return base


def test_ade20k_layout_and_reduce_zero_label(tmp_path):
    base = _ade(tmp_path, [[[0, 1, 150], [255, 2, 3]], [[5, 5, 5], [5, 5, 5]]])
    for root in (tmp_path, base):
        ds = ADE20KDataset(root, split="val")
        assert len(ds) == 2 and ds.num_classes == 150
    image, mask = ds[0]
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert mask.tolist() == [[255, 0, 149], [255, 1, 2]]


def test_cityscapes_layout(tmp_path):
    for city, frame in [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")]:
        _img(tmp_path / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", 2, 2)
        gt = tmp_path / "gtFine" / "val" / city
        _mask(gt / f"{frame}_gtFine_labelTrainIds.png", [[0, 18], [255, 3]])
        _mask(gt / f"{frame}_gtFine_labelIds.png", [[7, 33], [0, 12]])  # ignored: not train ids
        _img(gt / f"{frame}_gtFine_color.png", 2, 2)
    ds = CityscapesDataset(tmp_path)
    assert len(ds) == 2 and ds.info.name == "cityscapes"
    assert ds.mask_path(0).name == "aachen_000000_000019_gtFine_labelTrainIds.png"
    assert ds[1][1].tolist() == [[0, 18], [255, 3]]


def test_cityscapes_without_train_ids_says_how_to_make_them(tmp_path):
    _img(tmp_path / "leftImg8bit" / "val" / "a" / "a_0_1_leftImg8bit.png")
    _mask(tmp_path / "gtFine" / "val" / "a" / "a_0_1_gtFine_labelIds.png", [[7]])
    with pytest.raises(FileNotFoundError, match="createTrainIdLabelImgs"):
        CityscapesDataset(tmp_path)


def test_cocostuff_layout(tmp_path):
    for name in ("000000000139", "000000000285"):
        _img(tmp_path / "images" / "val2017" / f"{name}.jpg", 2, 2)
        _mask(tmp_path / "annotations" / "val2017" / f"{name}_labelTrainIds.png", [[0, 170], [255, 9]])
        _mask(tmp_path / "annotations" / "val2017" / f"{name}.png", [[0, 181], [255, 9]])  # raw ids: ignored
    ds = open_dataset("coco-stuff", tmp_path)
    assert isinstance(ds, COCOStuffDataset) and len(ds) == 2 and ds.num_classes == 171
    assert ds[0][1].max() == 255


def test_folder_pairs_by_stem_recursively_and_accepts_16bit_and_palette_masks(tmp_path):
    info = custom_dataset_info(["a", "b", "c"])
    _img(tmp_path / "images" / "x.jpg", 2, 2)
    _img(tmp_path / "images" / "sub" / "y.png", 2, 2)
    _mask(tmp_path / "masks" / "x.png", [[0, 1], [2, 255]], mode="I;16")
    pal = Image.fromarray(np.array([[2, 1], [0, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    (tmp_path / "masks" / "sub").mkdir()
    pal.save(tmp_path / "masks" / "sub" / "y.png")
    ds = open_dataset("folder", tmp_path, info=info)
    assert isinstance(ds, FolderDataset) and len(ds) == 2
    assert ds[0][1].tolist() == [[2, 1], [0, 0]]  # sub/y sorts before x
    assert ds[1][1].tolist() == [[0, 1], [2, 255]]


def test_unpaired_files_are_listed(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "b.png")
    _mask(tmp_path / "masks" / "a.png", np.zeros((6, 8)))
    _mask(tmp_path / "masks" / "c.png", np.zeros((6, 8)))
    with pytest.raises(ValueError) as err:
        FolderDataset(tmp_path / "images", tmp_path / "masks", custom_dataset_info(["x"]))
    message = str(err.value)
    assert "1 image(s) without a mask" in message and "b.png" in message
    assert "1 mask(s) without an image" in message and "c.png" in message and "a.png" not in message


def test_missing_folders_are_named(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"annotations.*validation"):
        ADE20KDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown ADE20K split"):
        ADE20KDataset(tmp_path, split="test")


def test_ambiguous_names_are_an_error(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "a.png", np.zeros((6, 8)))
    with pytest.raises(ValueError, match="share a name"):
        FolderDataset(tmp_path / "images", tmp_path / "masks", custom_dataset_info(["x"]))


def test_out_of_range_mask_values_name_the_file_and_values(tmp_path):
    _img(tmp_path / "images" / "a.png", 2, 2)
    _mask(tmp_path / "masks" / "a.png", [[0, 3], [7, 255]])
    ds = FolderDataset(tmp_path / "images", tmp_path / "masks", custom_dataset_info(["x", "y", "z"]))
    with pytest.raises(ValueError, match=r"a\.png: mask labels \[3, 7\] are outside the class range 0\.\.2"):
        ds[0]


def test_colour_masks_and_size_mismatches_are_rejected(tmp_path):
    _img(tmp_path / "images" / "a.png", 2, 2)
    _img(tmp_path / "masks" / "a.png", 2, 2)  # an RGB "mask"
    ds = FolderDataset(tmp_path / "images", tmp_path / "masks", custom_dataset_info(["x"]))
    with pytest.raises(ValueError, match="single-channel class-index"):
        ds.load_mask(0)
    _mask(tmp_path / "masks" / "a.png", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"mask size \(3, 3\) differs from image size \(2, 2\)"):
        ds[0]
