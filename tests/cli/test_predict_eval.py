"""`csap-zoo predict` and `csap-zoo eval`, and the folder-prediction API behind them."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import csap_zoo
import csap_zoo.predict
from csap_zoo.cli import main
from csap_zoo.inference import Segmenter
from csap_zoo.predict import predict_paths

from _helpers import ManyClasses


def _write_image(path, h=40, w=48, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_segmenter():
    torch.manual_seed(0)
    return Segmenter(csap_zoo.create_model("csap_tiny", num_classes=3))


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_help_of_each_subcommand(capsys):
    for command, words in [("predict", ["--model", "--checkpoint", "--out", "--mode", "--tta", "glob"]),
                           ("eval", ["--data", "--dataset", "ade20k", "cityscapes", "cocostuff", "folder"])]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), out
    main(["models", "csap_tiny"])
    assert "csap_tiny" in capsys.readouterr().out  # the existing subcommand still works


def test_predict_folder_names_skipped_and_failed_files_and_exits_1_on_a_failure(tmp_path, capsys):
    src = tmp_path / "in"
    _write_image(src / "a.jpg")
    _write_image(src / "b.png", 33, 35, seed=1)
    (src / "..png").write_bytes((src / "b.png").read_bytes())  # a dot-file: left out, and named
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        code = main(["predict", str(src), "--model", "csap_tiny.cityscapes", "--out", str(out), "--no-progress"])
    assert code == 1
    messages = [str(w.message) for w in record]
    skipped = [m for m in messages if m.startswith("skipped 2 file(s) that are not images or are hidden")]
    failed = [m for m in messages if m.startswith("failed on 1 unreadable image file(s)")]
    assert len(skipped) == 1 and len(failed) == 1, messages
    assert "notes.txt: not an image file" in skipped[0] and "..png: hidden file" in skipped[0]
    assert "broken.png: unreadable image" in failed[0] and "notes.txt" not in failed[0]
    captured = capsys.readouterr()
    assert "error: 1 of 3 image(s) could not be read" in captured.err
    assert _files(out) == ["labels/a.png", "labels/b.png", "overlays/a.png", "overlays/b.png"]
    labels = np.asarray(Image.open(out / "labels" / "b.png"))
    assert labels.shape == (33, 35) and labels.max() < 19
    overlay = np.asarray(Image.open(out / "overlays" / "b.png"))
    assert overlay.shape[1] > 35 and overlay.shape[2] == 3  # overlay + legend
    assert "wrote 2 label map(s)" in captured.out


def test_predict_single_file_glob_slide_and_tta(tmp_path):
    _write_image(tmp_path / "x" / "one.png", 37, 41)
    _write_image(tmp_path / "x" / "two.jpg", 36, 40)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "x" / "one.png"), "--model", "csap_tiny", "--out", str(out),
                 "--mode", "slide", "--crop-size", "32", "--stride", "24", "--no-progress"]) == 0
    assert _files(out) == ["labels/one.png", "overlays/one.png"]
    assert main(["predict", str(tmp_path / "x" / "*.jpg"), "--model", "csap_tiny", "--out", str(out), "--tta",
                 "--no-progress"]) == 0
    assert "labels/two.png" in _files(out)


def test_a_single_unreadable_file_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "out"
    assert main(["predict", str(bad), "--model", "csap_tiny", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "cannot read" in err
    assert not out.exists()
    assert main(["predict", str(tmp_path / "missing*.png"), "--model", "csap_tiny", "--out", str(out)]) == 1
    assert "matches no files" in capsys.readouterr().err


def test_failure_midway_leaves_only_complete_results(tmp_path, tiny_segmenter, monkeypatch):
    for i in range(3):
        _write_image(tmp_path / "in" / f"img{i}.png", seed=i)
    calls = {"n": 0}
    real_write = csap_zoo.predict.write_png

    def flaky_write(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the overlay of the second image
            raise OSError("disk full")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(csap_zoo.predict, "write_png", flaky_write)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        predict_paths(tiny_segmenter, tmp_path / "in", out, progress=False)
    assert _files(out) == ["labels/img0.png", "overlays/img0.png"]  # no temp files, no lone label

    calls["n"] = 2  # fail on the very first image's overlay: the output folder this call made is removed
    out2 = tmp_path / "out2"
    with pytest.raises(OSError):
        predict_paths(tiny_segmenter, tmp_path / "in", out2, progress=False)
    assert not out2.exists()


def test_same_stem_outputs_are_refused_up_front(tmp_path, tiny_segmenter):
    _write_image(tmp_path / "a" / "x.png")
    _write_image(tmp_path / "b" / "x.jpg")
    with pytest.raises(ValueError, match="same output name"):
        predict_paths(tiny_segmenter, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"], tmp_path / "o",
                      progress=False)
    assert not (tmp_path / "o").exists()


def _folder_dataset(root, masks):
    for i, mask in enumerate(masks):
        _write_image(root / "images" / f"s{i}.png", *np.asarray(mask).shape, seed=i)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(mask, np.uint8)).save(root / "masks" / f"s{i}.png")


def test_eval_folder_with_a_checkpoint_matches_the_api(tmp_path, capsys):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (36, 44)) for _ in range(2)]
    masks[0][:5] = 255
    _folder_dataset(tmp_path / "data", masks)
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    torch.manual_seed(1)
    model = csap_zoo.create_model("csap_tiny", num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    code = main(["eval", "--model", "csap_tiny", "--checkpoint", str(tmp_path / "w.safetensors"), "--dataset",
                 "folder", "--data", str(tmp_path / "data"), "--classes", str(tmp_path / "classes.txt"),
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sky" in out and "road" in out and "car" in out
    dataset = csap_zoo.data.open_dataset("folder", tmp_path / "data",
                                         info=csap_zoo.data.custom_dataset_info(["sky", "road", "car"]))
    expected = csap_zoo.evaluate(Segmenter(model), dataset, progress=False)
    assert expected.summary() in out


def test_eval_ade20k_layout(tmp_path, capsys):
    base = tmp_path / "ADEChallengeData2016"
    for i in range(2):
        _write_image(base / "images" / "validation" / f"ADE_val_{i:08d}.jpg", 34, 38, seed=i)
        (base / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((34, 38), i * 7, np.uint8)).save(base / "annotations" / "validation" /
                                                               f"ADE_val_{i:08d}.png")
    assert main(["eval", "--model", "csap_tiny", "--dataset", "ade20k", "--data", str(tmp_path), "--resize", "0",
                 "--limit", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "windowpane" in out


def test_eval_errors_name_the_problem(tmp_path, capsys):
    _folder_dataset(tmp_path / "data", [np.array([[0, 5], [1, 255]]).repeat(20, 0).repeat(20, 1)])
    code = main(["eval", "--model", "csap_tiny", "--dataset", "folder", "--data",
                 str(tmp_path / "data"), "--classes", str(_classes(tmp_path, 3)), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "s0.png" in err and "[5]" in err  # the mask's file and its bad value
    # a checkpoint of another shape
    save_file(csap_zoo.create_model("csap_tiny", num_classes=5).state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["eval", "--model", "csap_tiny", "--checkpoint", str(tmp_path / "w.safetensors"), "--dataset",
                 "folder", "--data", str(tmp_path / "data"), "--classes", str(_classes(tmp_path, 3))]) == 1
    assert "predicts 5 classes but the dataset has 3" in capsys.readouterr().err
    # a missing layout, then a model tagged for another dataset
    assert main(["eval", "--model", "csap_tiny.cityscapes", "--dataset", "ade20k", "--data", str(tmp_path)]) == 1
    assert "ADE20K images folder not found" in capsys.readouterr().err
    base = tmp_path / "ADEChallengeData2016"
    _write_image(base / "images" / "validation" / "ADE_val_00000001.jpg", 34, 38)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.ones((34, 38), np.uint8)).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    assert main(["eval", "--model", "csap_tiny.cityscapes", "--dataset", "ade20k", "--data", str(tmp_path)]) == 1
    assert "predicts 19 classes but the dataset has 150" in capsys.readouterr().err


def _classes(root, n):
    path = root / "classes.txt"
    path.write_text("\n".join(f"c{i}" for i in range(n)))
    return path


# ---------------------------------------------------------------------- streamed outputs equal the full-size ones
def _scene(h, w, seed):
    """A picture with regions (so labels vary in blobs) plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    blobs = ((xx // 37 + yy // 29) % 3)[..., None] * np.array([80, -60, 40])
    return np.clip(base + blobs + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _reference_inputs(root):
    """Files of several modes and orientations, as they come from cameras and tools."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = _scene(230, 310, 0)
    files = {}
    Image.fromarray(rgb).save(root / "rgb.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_scene(200, 260, 1)).save(root / "rotated.jpg", quality=92, exif=exif.tobytes())
    exif[0x0112] = 3
    Image.fromarray(_scene(150, 170, 2)).save(root / "flipped_png.png", exif=exif.tobytes())
    exif[0x0112] = 7
    Image.fromarray(_scene(121, 187, 7)).save(root / "transverse.png", exif=exif.tobytes())
    Image.fromarray(rgb).quantize(40).save(root / "palette.png")
    Image.fromarray((_scene(190, 240, 3)[..., 0].astype(np.uint16) * 257)).save(root / "gray16.png")
    Image.fromarray(np.dstack([_scene(160, 200, 4), np.full((160, 200), 90, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(_scene(19, 301, 5)).save(root / "short.png")  # the legend is taller than the image
    Image.fromarray(_scene(170, 150, 6)[..., 1] > 120).save(root / "bits.png")
    for path in sorted(root.iterdir()):
        files[path.stem] = path
    return files


def _reference(seg, path, alpha, with_legend):
    """What predict_paths wrote before its outputs were streamed: the labels of the full-size code path and
    visualize.render_overlay on the fully decoded image."""
    from csap_zoo.data.io import to_rgb_array
    from csap_zoo.visualize import render_overlay

    labels = seg.predict(path, return_probs=True)[0]
    overlay = render_overlay(to_rgb_array(path), labels, seg.dataset_info, alpha=alpha, with_legend=with_legend)
    return labels, overlay


@pytest.mark.parametrize("setup", ["whole", "slide", "tta", "many_classes"])
def test_written_label_maps_and_overlays_equal_the_full_size_rendering(tmp_path, monkeypatch, setup):
    torch.manual_seed(0)
    tiny = csap_zoo.create_model("csap_tiny", num_classes=4).eval()
    seg, alpha, with_legend = {
        "whole": lambda: (Segmenter(tiny, resize=(96, 64)), 0.5, True),
        "slide": lambda: (Segmenter(tiny, mode="slide", resize=(160, 120), crop_size=64, stride=48), 0.35, True),
        "tta": lambda: (Segmenter(tiny, resize=(96, 80), ratios=(0.75, 1.0), flip=True), 0.5, True),
        "many_classes": lambda: (Segmenter(ManyClasses(), resize=(100, 70)), 0.6, False),
    }[setup]()
    # small bands, so that every image is cut into many of them
    monkeypatch.setattr(csap_zoo.inference.bands, "BAND_ELEMENTS", 4096)
    monkeypatch.setattr(csap_zoo.predict, "_WRITE_BAND_PIXELS", 1500)
    monkeypatch.setattr(csap_zoo.data.io, "_BAND_PIXELS", 5000)
    files = _reference_inputs(tmp_path / "in")
    summary = predict_paths(seg, tmp_path / "in", tmp_path / "out", alpha=alpha, legend=with_legend,
                            progress=False)
    assert len(summary.written) == len(files) and not summary.skipped
    for stem, path in files.items():
        labels, overlay = _reference(seg, path, alpha, with_legend)
        with Image.open(tmp_path / "out" / "labels" / f"{stem}.png") as written:
            assert written.mode == ("P" if labels.max() <= 255 else "I;16"), stem  # palette: colours in viewers
            np.testing.assert_array_equal(np.asarray(written).astype(np.int64), labels, err_msg=stem)
        with Image.open(tmp_path / "out" / "overlays" / f"{stem}.png") as written:
            assert written.mode == "RGB", stem
            np.testing.assert_array_equal(np.asarray(written), overlay, err_msg=stem)
    if setup == "many_classes":
        assert max(int(np.asarray(Image.open(p)).max()) for p in (tmp_path / "out" / "labels").iterdir()) > 255


def test_eval_checks_data_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import csap_zoo.cli.predict_eval

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --data was checked")

    monkeypatch.setattr(csap_zoo.cli.predict_eval, "load_model", no_model)
    # a benchmark layout, a folder with a classes file, and a folder without one (its classes come from the model)
    assert main(["eval", "--model", "csap_tiny.ade20k", "--pretrained", "--dataset", "ade20k",
                 "--data", str(tmp_path / "missing")]) == 1
    assert "ADE20K images folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--model", "csap_tiny", "--dataset", "folder", "--data", str(tmp_path / "empty"),
                 "--classes", str(_classes(tmp_path, 3))]) == 1
    assert "images" in capsys.readouterr().err
    assert main(["eval", "--model", "csap_tiny", "--dataset", "folder", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "no such folder" in err


def test_predict_exits_0_when_only_non_images_were_skipped(tmp_path, capsys):
    src = tmp_path / "in"
    _write_image(src / "a.png")
    (src / "README.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        assert main(["predict", str(src), "--model", "csap_tiny.cityscapes", "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    assert "error" not in capsys.readouterr().err
