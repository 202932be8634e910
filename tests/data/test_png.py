"""PNG writing: the streamed encoder (rows given, errors, permissions) and palette ("P") label PNGs."""
import numpy as np
import pytest
from PIL import Image

from csap_zoo.data import png
from csap_zoo.data.io import read_mask


# ---------------------------------------------------------------------- streamed PNG writing
def _bands(arr, rows):
    return [arr[y:y + rows] for y in range(0, arr.shape[0], rows)]


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_streamed_png_decodes_to_the_rows_given(tmp_path, mode, rows):
    rng = np.random.default_rng(rows)
    h, w = 61, 45
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (xx * 5 + yy * 3) % 256  # long runs and gradients pick Sub / Up / Average / Paeth rows
    noise = rng.integers(0, 256, (h, w))
    if mode == "RGB":
        arr = np.dstack([smooth, noise, (smooth + noise) // 2]).astype(np.uint8)
    elif mode == "L":
        arr = np.where(yy < h // 2, smooth, noise).astype(np.uint8)
    else:
        arr = (np.where(yy < h // 2, smooth * 257, noise * 200 + 7)).astype(np.int32)
    path = png.write_png(tmp_path / "x.png", _bands(arr, rows), (h, w), mode)
    with Image.open(path) as image:
        image.verify()  # CRCs and structure
    with Image.open(path) as image:
        assert image.mode == mode and image.size == (w, h)
        np.testing.assert_array_equal(np.asarray(image).astype(np.int64), arr.astype(np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_streamed_png_errors_leave_no_file(tmp_path):
    arr = np.zeros((10, 8), np.uint8)
    with pytest.raises(ValueError, match="got 9 rows for a PNG of height 10"):
        png.write_png(tmp_path / "a.png", [arr[:9]], (10, 8), "L")
    with pytest.raises(ValueError, match="more than that"):
        png.write_png(tmp_path / "a.png", [arr, arr[:1]], (10, 8), "L")
    with pytest.raises(ValueError, match=r"shape \(rows, 8, 3\)"):
        png.write_png(tmp_path / "a.png", [arr], (10, 8), "RGB")
    with pytest.raises(ValueError, match=r"values must be in 0..255, got 0..300"):
        png.write_png(tmp_path / "a.png", [np.arange(80).reshape(10, 8) * 300 // 79], (10, 8), "L")
    with pytest.raises(ValueError, match="mode must be one of"):
        png.write_png(tmp_path / "a.png", [arr], (10, 8), "P")

    def failing():
        yield arr[:5]
        raise OSError("source went away")

    with pytest.raises(OSError, match="went away"):
        png.write_png(tmp_path / "a.png", failing(), (10, 8), "L")
    assert list(tmp_path.iterdir()) == []


def test_streamed_png_gets_the_umask_permissions(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = png.write_png(tmp_path / "p.png", [np.zeros((2, 2), np.uint8)], (2, 2), "L")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------- palette ("P") label PNGs
def _chunk_types(path):
    """The chunk types of a PNG file, in order."""
    data = path.read_bytes()
    pos, kinds = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kinds.append(data[pos + 4:pos + 8].decode("ascii"))
        pos += 12 + length
    return kinds


def test_save_png_with_a_palette_stores_the_class_indices_and_the_dataset_colours(tmp_path):
    from csap_zoo.data.metadata import SHAPES_PALETTE

    labels = np.random.default_rng(0).integers(0, 6, (30, 41))
    labels[3, 4] = 255  # the ignore index: no colour of its own
    path = png.save_png(labels, tmp_path / "labels.png", palette=SHAPES_PALETTE)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), labels)  # the pixel values are the class indices
        colours = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(colours[labels != 255], np.asarray(SHAPES_PALETTE, np.uint8)[labels[labels != 255]])
    assert colours[3, 4].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(read_mask(path), labels)
    small = png.save_png(np.array([[0, 1], [1, 0]]), tmp_path / "small.png", palette=SHAPES_PALETTE)
    with Image.open(small) as image:  # all the dataset's colours, even those not used
        assert image.mode == "P" and len(image.getpalette()) == 3 * len(SHAPES_PALETTE)
    # more than 256 labels cannot be palette indices: 16-bit grayscale as without a palette
    many = png.save_png(np.array([[0, 300]]), tmp_path / "many.png", palette=[(i % 256, 0, 0) for i in range(301)])
    with Image.open(many) as image:
        assert image.mode.startswith("I") and np.asarray(image).tolist() == [[0, 300]]


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_streamed_palette_png_equals_what_pil_writes(tmp_path, rows):
    from csap_zoo.data.metadata import get_dataset_info

    info = get_dataset_info("ade20k")
    h, w = 61, 45
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.where(yy < h // 2, (xx // 5 + yy // 7) % 150, np.random.default_rng(rows).integers(0, 150, (h, w)))
    labels[-1, :3] = 255
    plte = png.label_palette(info.palette, 256)
    path = png.write_png(tmp_path / "streamed.png", _bands(labels, rows), (h, w), "P", palette=plte)
    reference = png.save_png(labels, tmp_path / "pil.png", palette=info.palette)
    assert _chunk_types(path)[:2] == ["IHDR", "PLTE"] and _chunk_types(path)[-1] == "IEND"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as streamed, Image.open(reference) as pil:
        assert streamed.mode == pil.mode == "P" and streamed.size == pil.size == (w, h)
        np.testing.assert_array_equal(np.asarray(streamed), np.asarray(pil))
        np.testing.assert_array_equal(np.asarray(streamed), labels)
        assert streamed.getpalette() == pil.getpalette()
        np.testing.assert_array_equal(np.asarray(streamed.convert("RGB")), np.asarray(pil.convert("RGB")))
        assert streamed.getpalette()[:3 * 150] == [c for colour in info.palette for c in colour]
        assert streamed.getpalette()[3 * 255:] == [0, 0, 0]  # the ignore index shows black


def test_palette_png_refuses_indices_without_a_colour_and_a_palette_elsewhere(tmp_path):
    arr = np.array([[0, 1], [2, 3]], np.uint8)
    with pytest.raises(ValueError, match=r"3-entry palette must be in 0..2, got 0..3"):
        png.write_png(tmp_path / "a.png", [arr], (2, 2), "P", palette=png.label_palette([(1, 2, 3)] * 3, 3))
    with pytest.raises(ValueError, match="only written with mode 'P'"):
        png.write_png(tmp_path / "a.png", [arr], (2, 2), "L", palette=png.label_palette([(1, 2, 3)], 4))
    with pytest.raises(ValueError, match="1..256"):
        png.write_png(tmp_path / "a.png", [arr], (2, 2), "P", palette=b"\0" * 769)
    with pytest.raises(ValueError, match="1..256 entries"):
        png.label_palette([(1, 2, 3)], 257)
    assert list(tmp_path.iterdir()) == []
    assert png.label_palette([(1, 2, 3), (4, 5, 6)], 3) == bytes([1, 2, 3, 4, 5, 6, 0, 0, 0])
