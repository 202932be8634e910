"""The training pipeline (section 5) and the generated shapes dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from csap_zoo.data import FolderDataset, get_dataset_info
from csap_zoo.data.synthetic import SHAPES_CLASSES, generate_shapes_dataset, render_shapes_sample
from csap_zoo.data.transforms import TrainTransform, keep_ratio_size
from csap_zoo.data import read_classes_file


def _sample(h=60, w=80):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.int64)
    mask[:, w // 2:] = 1
    mask[:5] = 255
    return image, mask


def test_output_is_the_crop_size_normalised_and_deterministic_per_seed():
    image, mask = _sample()
    t = TrainTransform(crop_size=(64, 64), scale=(160, 40), ratio_range=(0.5, 2.0))
    out = [t(image, mask, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    for x, y in out:
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert y.shape == (64, 64) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 255}
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert not torch.equal(out[0][0], out[2][0])


def test_small_images_are_padded_with_zero_and_ignore():
    image, mask = _sample(20, 30)
    t = TrainTransform(crop_size=(32, 48), scale=None, flip_prob=0, photometric=False, mean=(0, 0, 0),
                       std=(255, 255, 255))
    x, y = t(image, mask, torch.Generator().manual_seed(0))
    assert torch.allclose(x[:, :20, :30], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert (x[:, 20:] == 0).all() and (x[:, :, 30:] == 0).all()
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all() and torch.equal(y[:20, :30], torch.from_numpy(mask))


def test_resize_follows_the_ratio_range_and_keeps_the_aspect():
    assert keep_ratio_size(512, 1024, (2048, 512)) == (512, 1024)
    assert keep_ratio_size(100, 400, (2048, 512)) == (512, 2048)
    image, mask = _sample(50, 100)
    t = TrainTransform(crop_size=(1000, 1000), scale=(200, 100), ratio_range=(0.5, 2.0), flip_prob=0,
                       photometric=False, cat_max_ratio=1.0)
    heights = set()
    for seed in range(20):
        _, y = t(image, mask, torch.Generator().manual_seed(seed))
        valid = (y != 255).any(dim=1).nonzero()
        heights.add(int(valid.max()) + 1)
    assert min(heights) >= 50 * 0.5 - 1 and max(heights) <= 100 * 2 + 1 and len(heights) > 5


def test_cat_max_ratio_avoids_single_class_crops():
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), np.int64)
    mask[:, 80:] = 1  # most 40x40 crops hold class 0 only
    strict = TrainTransform(crop_size=(40, 40), scale=None, cat_max_ratio=0.75, flip_prob=0, photometric=False)
    loose = TrainTransform(crop_size=(40, 40), scale=None, cat_max_ratio=1.0, flip_prob=0, photometric=False)

    def mixed(t):
        return sum(len(t(image, mask, torch.Generator().manual_seed(s))[1].unique()) > 1 for s in range(30))
    assert mixed(strict) > mixed(loose) + 10


def test_flip_moves_image_and_mask_together():
    image, mask = _sample()
    t = TrainTransform(crop_size=(60, 80), scale=None, flip_prob=1.0, photometric=False, mean=(0, 0, 0),
                       std=(255, 255, 255))
    x, y = t(image, mask, torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.from_numpy(mask).flip(-1))
    assert torch.allclose(x, torch.from_numpy(image).permute(2, 0, 1).float().flip(-1) / 255)


def test_photometric_distortion_changes_colours_only():
    image, mask = _sample()
    plain = TrainTransform(crop_size=(60, 80), scale=None, flip_prob=0, photometric=False)
    photo = TrainTransform(crop_size=(60, 80), scale=None, flip_prob=0, photometric=True)
    changed = 0
    for s in range(5):
        (x0, y0), (x1, y1) = (t(image, mask, torch.Generator().manual_seed(s)) for t in (plain, photo))
        assert torch.equal(y0, y1)
        changed += not torch.allclose(x0, x1)
    assert changed >= 3


def test_generated_shapes_dataset_is_deterministic_and_readable(tmp_path):
    a, m = render_shapes_sample(5, (64, 64))
    b, n = render_shapes_sample(5, (64, 64))
    assert np.array_equal(a, b) and np.array_equal(m, n) and a.shape == (64, 64, 3) and m.dtype == np.uint8
    paths = generate_shapes_dataset(tmp_path, num_train=6, num_val=2, size=(64, 64))
    names, palette = read_classes_file(paths["classes"])
    assert tuple(names) == SHAPES_CLASSES and palette == list(get_dataset_info("shapes").palette)
    ds = FolderDataset(paths["train_images"], paths["train_masks"], get_dataset_info("shapes"))
    labels = np.concatenate([ds[i][1].ravel() for i in range(len(ds))])
    assert len(ds) == 6 and labels.max() < len(SHAPES_CLASSES) and len(np.unique(labels)) >= 3
    # class frequencies: background dominates but every image has at least one shape
    assert all((ds[i][1] > 0).any() for i in range(len(ds)))


@pytest.mark.parametrize("text, names, palette", [
    ("sky\nroad\n", ["sky", "road"], None),
    ("# comment\ntraffic light 250 170 30\nroad 128 64 128\n\n", ["traffic light", "road"],
     [(250, 170, 30), (128, 64, 128)]),
])
def test_classes_file(tmp_path, text, names, palette):
    (tmp_path / "c.txt").write_text(text)
    assert read_classes_file(tmp_path / "c.txt") == (names, palette)


def test_classes_file_errors(tmp_path):
    (tmp_path / "c.txt").write_text("a 1 2 3\nb\n")
    with pytest.raises(ValueError, match="every line or on none"):
        read_classes_file(tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("a 1 2 300\n")
    with pytest.raises(ValueError, match="outside 0..255"):
        read_classes_file(tmp_path / "c.txt")
