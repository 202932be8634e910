"""Visualisation: colour masks, overlays, legends, atomic PNG writes."""
import os

import numpy as np
import pytest
from PIL import Image

from csap_zoo.data.metadata import custom_dataset_info, get_dataset_info
from csap_zoo.visualize import colorize, legend, legend_extent, overlay, present_classes, render_overlay, save_png

INFO = custom_dataset_info(["a", "b", "c"], palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    labels = np.array([[0, 1], [2, 255]])
    out = colorize(labels, INFO)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 0].tolist() == [0, 0, 255]
    assert out[1, 1].tolist() == [0, 0, 0]
    city = colorize(np.zeros((1, 1), int), get_dataset_info("cityscapes"))
    assert city[0, 0].tolist() == [128, 64, 128]
    with pytest.raises(ValueError, match=r"labels \[3\] have no palette colour"):
        colorize(np.array([[3]]), INFO)


def test_overlay_blends_with_alpha_and_keeps_ignored_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 255]])
    assert (overlay(image, labels, INFO, alpha=0.0) == image).all()
    full = overlay(image, labels, INFO, alpha=1.0)
    assert full[0, 0].tolist() == [255, 0, 0] and full[1, 1].tolist() == [100, 100, 100]
    half = overlay(image, labels, INFO, alpha=0.5)
    assert half[0, 1].tolist() == [50, 178, 50]  # round(0.5*100 + 0.5*255) = 177.5 -> 178
    with pytest.raises(ValueError, match="do not match the image"):
        overlay(image, np.zeros((3, 3), int), INFO)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, labels, INFO, alpha=1.5)


def test_legend_lists_present_classes():
    labels = np.array([[2, 2], [0, 255]])
    assert present_classes(labels) == [0, 2]
    panel = legend([0, 2], INFO)
    assert panel.ndim == 3 and panel.shape[2] == 3
    colours = {tuple(c) for c in panel.reshape(-1, 3).tolist()}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours and (0, 255, 0) not in colours


def test_render_overlay_adds_a_legend_panel_and_pads_short_images():
    image = np.zeros((4, 5, 3), np.uint8)
    labels = np.array([[0] * 5, [1] * 5, [2] * 5, [255] * 5])
    out = render_overlay(image, labels, INFO)
    assert out.shape[1] > 5 and out.shape[0] >= 4
    assert render_overlay(image, labels, INFO, with_legend=False).shape == (4, 5, 3)


def test_save_png_is_atomic_and_round_trips(tmp_path, monkeypatch):
    labels = np.array([[0, 1], [300, 2]])
    path = save_png(labels, tmp_path / "sub" / "labels.png")
    back = np.asarray(Image.open(path))
    assert back.tolist() == [[0, 1], [300, 2]]  # 16-bit when values exceed 255
    small = save_png(np.array([[0, 149]]), tmp_path / "small.png")
    assert Image.open(small).mode == "L"
    rgb = save_png(np.zeros((2, 3, 3), np.uint8), tmp_path / "rgb.png")
    assert Image.open(rgb).size == (3, 2)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(rgb).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.zeros((2, 2), np.uint8), tmp_path / "broken.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.png", "small.png", "sub"]


@pytest.mark.parametrize("count, height", [(3, 4000), (19, 700), (150, 3000), (5, 30), (40, 200)])
def test_the_top_of_a_tall_legend_is_the_whole_legend_above_white(count, height):
    info = get_dataset_info("ade20k")
    classes = list(range(0, 3 * count, 3))
    full = legend(classes, info, height=height)
    extent = legend_extent(classes, info, height=height)
    top = legend(classes, info, height=height, rows=extent)
    assert full.shape[0] == height and top.shape == (extent,) + full.shape[1:]
    np.testing.assert_array_equal(top, full[:extent])
    assert (full[extent:] == 255).all()
    if height > 20 * count + 40:  # all entries fit: only their rows are drawn
        assert extent < 20 * count + 40
    assert (full[:extent] != 255).any()


# ---------------------------------------------------------------------- class boundaries in overlays
def test_boundaries_mark_both_sides_and_follow_a_map_drawn_band_by_band():
    from csap_zoo.visualize import boundaries

    labels = np.array([[0, 0, 0, 0],
                       [0, 1, 1, 0],
                       [0, 1, 1, 255],
                       [0, 0, 0, 0]])
    edges = boundaries(labels)
    assert edges.tolist() == [[False, True, True, False],
                              [True, True, True, True],
                              [True, True, True, False],  # the ignore pixel itself is never outlined
                              [False, True, True, True]]
    assert not boundaries(np.zeros((3, 5), int)).any()  # the map's edge is not a boundary
    rng = np.random.default_rng(0)
    big = (rng.random((40, 33)) < 0.1).cumsum(axis=1) % 4
    for cut in ([1, 2, 17, 39], [13, 26]):
        parts = np.split(big, cut)
        banded = [boundaries(p, above=parts[i - 1] if i else None, below=parts[i + 1] if i + 1 < len(parts) else None)
                  for i, p in enumerate(parts)]
        np.testing.assert_array_equal(np.concatenate(banded), boundaries(big))


def test_overlay_outlines_are_opt_in_and_render_overlay_draws_them():
    image = np.full((4, 6, 3), 100, np.uint8)
    labels = np.array([[0, 0, 0, 1, 1, 1]] * 4)
    plain = overlay(image, labels, INFO, alpha=0.5)
    lined = overlay(image, labels, INFO, alpha=0.5, outline=(255, 255, 0))
    edge = np.zeros((4, 6), bool)
    edge[:, 2:4] = True
    assert (lined[edge] == [255, 255, 0]).all() and (lined[~edge] == plain[~edge]).all()
    assert (render_overlay(image, labels, INFO, with_legend=False)[edge] == 255).all()  # white by default
    np.testing.assert_array_equal(render_overlay(image, labels, INFO, with_legend=False, outline=None), plain)
    only_left = np.zeros((4, 6), bool)
    only_left[:, 0] = True
    assert (overlay(image, labels, INFO, outline=(9, 9, 9), edges=only_left)[only_left] == 9).all()
    with pytest.raises(ValueError, match="outline must be"):
        overlay(image, labels, INFO, outline=(300, 0, 0))
    with pytest.raises(ValueError, match="edges of size"):
        overlay(image, labels, INFO, outline=(0, 0, 0), edges=np.zeros((2, 2), bool))


@pytest.mark.parametrize("seed", [0, 1, 2, 424242])
def test_a_shapes_overlay_is_visibly_not_the_input(seed):
    """The shapes dataset draws objects in hues near their class colours, so a 50% blend alone stays close to the
    input; the outlines make every boundary stand out."""
    from csap_zoo.data.synthetic import render_shapes_sample, shapes_dataset_info
    from csap_zoo.visualize import boundaries

    info = shapes_dataset_info()
    image, labels = render_shapes_sample(seed, (128, 160), max_shapes=5)
    edges = boundaries(labels)
    assert edges.sum() > 200
    drawn = render_overlay(image, labels, info, with_legend=False).astype(np.int64)
    assert (drawn[edges] == 255).all()
    difference = np.abs(drawn - image.astype(np.int64))
    assert difference[edges].mean() > 100  # the blend alone: 24..44 on these samples
    assert difference.mean() > 1.05 * np.abs(overlay(image, labels, info).astype(np.int64) - image).mean()
