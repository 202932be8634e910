"""Image decoding: files closed, a pixel limit before decoding, reduced decoding, non-finite arrays."""
import gc
import warnings

import numpy as np
import pytest
from PIL import Image

from csap_zoo.data import io
from csap_zoo.data.io import ImageTooLargeError, decode_reduced, read_image, read_mask, to_rgb_array


def _frames(n, h=20, w=24):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L") for _ in range(n)]


def _truncated(path, fmt):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _resource_warnings(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
        except ValueError:
            pass
        gc.collect()
    return [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("kind", ["gif", "tiff", "truncated_png", "truncated_jpeg"])
def test_every_opened_file_is_closed(tmp_path, kind):
    if kind in ("gif", "tiff"):
        path = tmp_path / f"multi.{kind}"
        first, *rest = _frames(3)
        first.save(path, save_all=True, append_images=rest)
    else:
        path = tmp_path / f"cut.{kind.split('_')[1]}"
        _truncated(path, "PNG" if kind == "truncated_png" else "JPEG")
    for read in (lambda: read_image(path), lambda: read_mask(path), lambda: decode_reduced(path, lambda h, w: (4, 4)),
                 lambda: to_rgb_array(str(path))):
        assert _resource_warnings(read) == []
    if kind.startswith("truncated"):
        with pytest.raises(ValueError, match="valid, complete image"):
            read_image(path)


def test_pixel_limit_is_checked_before_decoding_with_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("1", (3000, 2000)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"big\.png.*3000x2000.*1,000,000.*max_pixels.*CSAP_ZOO_MAX_PIXELS"):
        read_image(path, max_pixels=1_000_000)
    monkeypatch.setenv("CSAP_ZOO_MAX_PIXELS", "7000000")
    assert read_image(path).shape == (2000, 3000, 3)
    monkeypatch.setenv("CSAP_ZOO_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError, match="limit of 100"):
        decode_reduced(path, lambda h, w: (10, 10))
    assert read_image(path, max_pixels=0).shape == (2000, 3000, 3)  # 0 = no limit
    monkeypatch.setenv("CSAP_ZOO_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="CSAP_ZOO_MAX_PIXELS"):
        read_image(path)


def test_pils_own_decompression_bomb_check_is_not_what_users_hit(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL would raise DecompressionBombError above 200 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert read_image(path).shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # PIL's setting is left as it was


def test_reduced_decoding_matches_a_box_reduce_of_the_full_image(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(arr).save(png)
    full, size = decode_reduced(png)
    np.testing.assert_array_equal(full, to_rgb_array(png))
    assert size == (301, 257)
    small, size = decode_reduced(png, lambda h, w: (h // 4, w // 4))
    assert size == (301, 257) and small.shape == (76, 65, 3)
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(arr).reduce(4)))
    np.testing.assert_array_equal(decode_reduced(arr, lambda h, w: (h // 4, w // 4))[0], small)
    # bands: the same result when each band holds only a few rows
    original = io._BAND_PIXELS
    try:
        io._BAND_PIXELS = 257 * 8
        np.testing.assert_array_equal(decode_reduced(png, lambda h, w: (h // 4, w // 4))[0], small)
        np.testing.assert_array_equal(decode_reduced(arr, lambda h, w: (h // 4, w // 4))[0], small)
    finally:
        io._BAND_PIXELS = original
    # palette and 1-bit images are converted band by band, then reduced
    pal = tmp_path / "p.png"
    Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(pal)
    expected = np.asarray(Image.fromarray(to_rgb_array(pal)).reduce(3))
    np.testing.assert_array_equal(decode_reduced(pal, lambda h, w: (h // 3, w // 3))[0], expected)


def test_jpegs_decode_at_a_reduced_scale_and_keep_their_orientation(tmp_path):
    arr = np.zeros((800, 600, 3), np.uint8)
    arr[:400] = 200
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated: shown as 600 rows x 800 columns
    path = tmp_path / "r.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    assert to_rgb_array(path).shape == (600, 800, 3)
    small, size = decode_reduced(path, lambda h, w: (h // 8, w // 8))
    assert size == (600, 800)
    assert small.shape == (75, 100, 3)
    full = to_rgb_array(path)
    np.testing.assert_allclose(small.mean(axis=(0, 2)), full.reshape(600, 100, 8, 3).mean(axis=(0, 2, 3)), atol=6)


def test_non_finite_float_arrays_are_refused_with_the_first_index():
    arr = np.zeros((5, 6, 3), np.float32)
    arr[2, 3, 1] = np.nan
    arr[4, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 non-finite.*\(2, 3, 1\)"):
        to_rgb_array(arr)


# ---------------------------------------------------------------------- streamed PNG writing, banded reading
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
    path = io.write_png(tmp_path / "x.png", _bands(arr, rows), (h, w), mode)
    with Image.open(path) as image:
        image.verify()  # CRCs and structure
    with Image.open(path) as image:
        assert image.mode == mode and image.size == (w, h)
        np.testing.assert_array_equal(np.asarray(image).astype(np.int64), arr.astype(np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_streamed_png_errors_leave_no_file(tmp_path):
    arr = np.zeros((10, 8), np.uint8)
    with pytest.raises(ValueError, match="got 9 rows for a PNG of height 10"):
        io.write_png(tmp_path / "a.png", [arr[:9]], (10, 8), "L")
    with pytest.raises(ValueError, match="more than that"):
        io.write_png(tmp_path / "a.png", [arr, arr[:1]], (10, 8), "L")
    with pytest.raises(ValueError, match=r"shape \(rows, 8, 3\)"):
        io.write_png(tmp_path / "a.png", [arr], (10, 8), "RGB")
    with pytest.raises(ValueError, match=r"values must be in 0..255, got 0..300"):
        io.write_png(tmp_path / "a.png", [np.arange(80).reshape(10, 8) * 300 // 79], (10, 8), "L")
    with pytest.raises(ValueError, match="mode must be one of"):
        io.write_png(tmp_path / "a.png", [arr], (10, 8), "P")

    def failing():
        yield arr[:5]
        raise OSError("source went away")

    with pytest.raises(OSError, match="went away"):
        io.write_png(tmp_path / "a.png", failing(), (10, 8), "L")
    assert list(tmp_path.iterdir()) == []


def test_streamed_png_gets_the_umask_permissions(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = io.write_png(tmp_path / "p.png", [np.zeros((2, 2), np.uint8)], (2, 2), "L")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "P", "I;16", "LA", "1"])
def test_image_rows_are_bands_of_the_decoded_image(tmp_path, orientation, mode):
    rng = np.random.default_rng(orientation)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    image = {"RGB": lambda: Image.fromarray(rgb), "P": lambda: Image.fromarray(rgb).quantize(17),
             "I;16": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 200),
             "LA": lambda: Image.fromarray(rgb[..., 0]).convert("LA"),
             "1": lambda: Image.fromarray(rgb[..., 0] > 100)}[mode]()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    image.save(path, exif=exif.tobytes())
    expected = to_rgb_array(path)
    assert io.image_format(path) == "PNG"
    rows = io.open_rows(path)
    assert rows.size == expected.shape[:2]
    got = np.concatenate([rows.rows(y, y + 5) for y in range(0, rows.size[0], 5)])
    np.testing.assert_array_equal(got, expected)
    assert expected.shape[:2] == ((31, 23) if orientation >= 5 else (23, 31))  # the orientation was applied


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
    path = io.save_png(labels, tmp_path / "labels.png", palette=SHAPES_PALETTE)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), labels)  # the pixel values are the class indices
        colours = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(colours[labels != 255], np.asarray(SHAPES_PALETTE, np.uint8)[labels[labels != 255]])
    assert colours[3, 4].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(read_mask(path), labels)
    small = io.save_png(np.array([[0, 1], [1, 0]]), tmp_path / "small.png", palette=SHAPES_PALETTE)
    with Image.open(small) as image:  # all the dataset's colours, even those not used
        assert image.mode == "P" and len(image.getpalette()) == 3 * len(SHAPES_PALETTE)
    # more than 256 labels cannot be palette indices: 16-bit grayscale as without a palette
    many = io.save_png(np.array([[0, 300]]), tmp_path / "many.png", palette=[(i % 256, 0, 0) for i in range(301)])
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
    plte = io.label_palette(info.palette, 256)
    path = io.write_png(tmp_path / "streamed.png", _bands(labels, rows), (h, w), "P", palette=plte)
    reference = io.save_png(labels, tmp_path / "pil.png", palette=info.palette)
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
        io.write_png(tmp_path / "a.png", [arr], (2, 2), "P", palette=io.label_palette([(1, 2, 3)] * 3, 3))
    with pytest.raises(ValueError, match="only written with mode 'P'"):
        io.write_png(tmp_path / "a.png", [arr], (2, 2), "L", palette=io.label_palette([(1, 2, 3)], 4))
    with pytest.raises(ValueError, match="1..256"):
        io.write_png(tmp_path / "a.png", [arr], (2, 2), "P", palette=b"\0" * 769)
    with pytest.raises(ValueError, match="1..256 entries"):
        io.label_palette([(1, 2, 3)], 257)
    assert list(tmp_path.iterdir()) == []
    assert io.label_palette([(1, 2, 3), (4, 5, 6)], 3) == bytes([1, 2, 3, 4, 5, 6, 0, 0, 0])


def test_a_path_that_is_not_an_image_file_says_what_it_is(tmp_path):
    import os

    import torch

    import csap_zoo
    from csap_zoo.inference import Segmenter

    with pytest.raises(IsADirectoryError, match="is a folder, not an image file.*take folders and globs"):
        read_image(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match=r"pipe.png as an image: it is a FIFO \(named pipe\), not a regular file"):
        read_image(tmp_path / "pipe.png")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope.png$"):
        read_image(tmp_path / "nope.png")
    torch.manual_seed(0)
    model = csap_zoo.create_model("csap_tiny", num_classes=2, backbone_args={"depths": (1, 1, 1, 1)}).eval()
    with pytest.raises(IsADirectoryError, match="is a folder, not an image file"):
        Segmenter(model).predict(tmp_path)
