"""Image decoding: files closed, a pixel limit before decoding, reduced decoding, non-finite arrays, banded reading."""
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


# ---------------------------------------------------------------------- banded reading
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
