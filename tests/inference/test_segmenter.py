"""Segmenter: input decoding, normalisation, whole / slide / multi-scale + flip, odd sizes, devices, precisions."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import csap_zoo
from csap_zoo.data.io import to_rgb_array
from csap_zoo.constants import IMAGENET_MEAN_255 as IMAGENET_MEAN
from csap_zoo.constants import IMAGENET_STD_255 as IMAGENET_STD
from csap_zoo.data.transforms import keep_ratio_size as _keep_ratio_size
from csap_zoo.inference import InferenceConfig, Segmenter, cpu_info


class Pointwise(nn.Module):
    """A cheap per-pixel model: any window of the image gives the same logits at each pixel."""

    def __init__(self, min_size=1):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1))
        self.shift = nn.Parameter(torch.tensor([0.1, 0.3, -0.2]).view(1, 3, 1, 1))
        self.num_classes, self.in_chans, self.min_size = 3, 3, min_size
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x * self.scale + self.shift


class Identity(nn.Module):
    """Logits = the normalised input itself (3 'classes')."""

    num_classes, in_chans, min_size = 3, 3, 1

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.dummy


@pytest.fixture(scope="module")
def tiny_num_classes():
    """conftest's ``tiny`` with four classes here."""
    return 4


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_slide_equals_whole_when_one_window_covers_the_image(tiny):
    raw = torch.from_numpy(_image(70, 90)).permute(2, 0, 1)[None].float()
    whole = Segmenter(tiny)
    for crop in [(96, 96), (70, 90)]:
        slide = Segmenter(tiny, mode="slide", crop_size=crop, stride=(40, 40))
        s_logits, _ = slide.scores(raw)
        w_logits, _ = whole.scores(raw)
        assert torch.equal(s_logits, w_logits)
    np.testing.assert_array_equal(slide.predict(_image(70, 90)), whole.predict(_image(70, 90)))


def test_slide_windows_cover_everything_and_snap_to_the_edge():
    """A per-pixel model gives the same result through any tiling, so slide == whole only if every pixel is
    covered and the summed logits are divided by the coverage count; the window grid is MMSeg's."""
    model = Pointwise()
    image = _image(333, 517)
    whole = Segmenter(model).predict(image, return_probs=True)
    model.shapes.clear()
    slide = Segmenter(model, mode="slide", crop_size=100, stride=70, slide_batch_size=8).predict(image,
                                                                                                  return_probs=True)
    np.testing.assert_array_equal(slide[0], whole[0])
    np.testing.assert_allclose(slide[1], whole[1], atol=1e-5)
    windows = sum(s[0] for s in model.shapes)
    assert windows == 5 * 7  # rows (333-100+69)//70+1, cols (517-100+69)//70+1
    assert all(s[-2:] == (100, 100) for s in model.shapes)  # last windows moved back inside, not cut short


def test_slide_on_a_4000x3000_image_is_fast_with_a_small_model():
    model = Pointwise()
    image = _image(3000, 4000)
    labels = Segmenter(model, mode="slide", crop_size=1024, stride=768, slide_batch_size=4).predict(image)
    assert labels.shape == (3000, 4000) and labels.dtype == np.int64
    assert sum(s[0] for s in model.shapes) == 4 * 5
    small = image[::50, ::50]
    np.testing.assert_array_equal(Segmenter(model).predict(small), labels[::50, ::50])


def test_odd_sizes_and_tiny_images_in_one_batch(tiny):
    seg = Segmenter(tiny)
    images = [_image(1, 1), _image(2, 3), _image(33, 47), _image(333, 517, seed=1)]
    out = seg.predict(images)
    assert [o.shape for o in out] == [(1, 1), (2, 3), (33, 47), (333, 517)]
    assert all(o.min() >= 0 and o.max() < 4 for o in out)


def test_slide_on_an_odd_size_with_csap_tiny(tiny):
    labels, probs = Segmenter(tiny, mode="slide", crop_size=256, stride=200).predict(_image(333, 517),
                                                                                    return_probs=True)
    assert labels.shape == (333, 517) and probs.shape == (4, 333, 517)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)


def test_images_below_the_minimum_size_are_stretched_up_and_back():
    model = Pointwise(min_size=32)
    labels = Segmenter(model).predict(_image(5, 40))
    assert labels.shape == (5, 40)
    assert model.shapes[-1][-2:] == (32, 40)


def test_normalisation_uses_the_given_mean_and_std():
    raw = torch.full((1, 3, 4, 5), 100.0)
    default, _ = Segmenter(Identity()).scores(raw)
    expected = (100.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(default[0, :, 0, 0], expected)
    custom, _ = Segmenter(Identity(), mean=(100, 50, 0), std=(1, 2, 4)).scores(raw)
    torch.testing.assert_close(custom[0, :, 0, 0], torch.tensor([0.0, 25.0, 25.0]))
    with pytest.raises(ValueError, match="one value per input channel"):
        Segmenter(Identity(), mean=(1, 2), std=(1, 1))


def test_mean_and_std_default_to_the_models_data_config():
    model = Identity()
    model.data_config = type("DC", (), {"mean": (10.0, 10.0, 10.0), "std": (2.0, 2.0, 2.0), "dataset": None,
                                        "class_names": None, "palette": None})()
    scores, _ = Segmenter(model).scores(torch.full((1, 3, 2, 2), 20.0))
    torch.testing.assert_close(scores, torch.full((1, 3, 2, 2), 5.0))


def test_all_input_kinds_give_the_same_labels(tmp_path, tiny):
    image = _image(40, 52)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    seg = Segmenter(tiny)
    expected = seg.predict(image)
    for source in (Image.fromarray(image), path, str(path), torch.from_numpy(image).permute(2, 0, 1),
                   torch.from_numpy(image).permute(2, 0, 1).float()):
        np.testing.assert_array_equal(seg.predict(source), expected)
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2)
    out = seg.predict(batch)
    assert isinstance(out, list) and len(out) == 2
    np.testing.assert_array_equal(out[1], expected)


@pytest.mark.parametrize("kind", ["gray16", "gray8", "rgba", "palette", "gray_alpha"])
def test_special_png_formats_predict_without_error(tmp_path, tiny, kind):
    rng = np.random.default_rng(0)
    path = tmp_path / f"{kind}.png"
    if kind == "gray16":
        Image.fromarray(rng.integers(0, 65536, (40, 36), dtype=np.uint16)).save(path)
    elif kind == "gray8":
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8), mode="L").save(path)
    elif kind == "rgba":
        Image.fromarray(rng.integers(0, 256, (40, 36, 4), dtype=np.uint8), mode="RGBA").save(path)
    elif kind == "palette":
        Image.fromarray(_image(40, 36)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (40, 36, 2), dtype=np.uint8), mode="LA").save(path)
    labels = Segmenter(tiny).predict(path)
    assert labels.shape == (40, 36)


def test_decoding_rules():
    sixteen = Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16))
    np.testing.assert_array_equal(to_rgb_array(sixteen)[0, :, 0], [0, 1, 255])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    assert to_rgb_array(Image.fromarray(rgba, mode="RGBA"))[0, 0].tolist() == [200, 0, 0]  # alpha dropped
    gray = to_rgb_array(np.full((3, 4), 7, np.uint8))
    assert gray.shape == (3, 4, 3) and (gray == 7).all()
    with pytest.raises(ValueError, match="shape"):
        to_rgb_array(np.zeros((3, 4, 5), np.uint8))


def test_keep_ratio_resize_follows_the_eval_scale():
    assert _keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
    assert _keep_ratio_size(1000, 3000, (2048, 512)) == (512, 1536)
    assert _keep_ratio_size(256, 4096, (2048, 512)) == (128, 2048)  # long side limits
    assert _keep_ratio_size(100, 150, (2048, 512)) == (512, 768)  # upscales too, like the eval pipeline
    model = Pointwise()
    labels = Segmenter(model, resize=(64, 32)).predict(_image(100, 150))
    assert labels.shape == (100, 150) and model.shapes[-1][-2:] == (32, 48)


def test_multi_scale_and_flip_average_probabilities():
    model = Pointwise()
    image = _image(48, 64)
    single = Segmenter(model).predict(image, return_probs=True)
    flipped = Segmenter(model, flip=True).predict(image, return_probs=True)  # a per-pixel model is flip-invariant
    np.testing.assert_allclose(flipped[1], single[1], atol=1e-6)
    model.shapes.clear()
    labels, probs = Segmenter(model, ratios=(0.5, 1.0, 1.5), flip=True).predict(image, return_probs=True)
    assert labels.shape == (48, 64) and probs.shape == (3, 48, 64)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert sorted({s[-2:] for s in model.shapes}) == [(24, 32), (48, 64), (72, 96)]
    assert len(model.shapes) == 6


def test_dataset_presets():
    ade = InferenceConfig.for_dataset("ade20k")
    assert ade.mode == "whole" and ade.resize == (2048, 512)
    city = InferenceConfig.for_dataset("cityscapes", tta=True)
    assert city.mode == "slide" and city.crop_size == (1024, 1024) and city.stride == (768, 768)
    assert city.ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and city.flip and city.num_views == 12
    assert InferenceConfig.for_dataset(None, mode="slide", crop_size=64).crop_size == (64, 64)


def test_precisions_of_any_module_on_the_cpu():
    with pytest.raises(ValueError, match="precision='fp16' runs on CUDA only"):
        Segmenter(Pointwise(), precision="fp16")
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16', 'int8'\]"):
        Segmenter(Pointwise(), precision="fp8")
    with pytest.raises(ValueError, match="runs on the OpenVINO backend"):
        Segmenter(Pointwise(), precision="int8")  # any module runs on torch
    module = Pointwise()
    if cpu_info().bf16:
        seg = Segmenter(module, precision="bf16")
        assert next(seg.model.parameters()).dtype == torch.bfloat16  # a bf16 copy, cast once
        assert next(module.parameters()).dtype == torch.float32  # the caller's module is left alone
        assert seg.predict(_image(16, 16)).shape == (16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_with_autocast(tiny, precision):
    seg = Segmenter(csap_zoo.create_model("csap_tiny", num_classes=4), device="cuda", precision=precision)
    labels, probs = seg.predict(_image(70, 90), return_probs=True)
    assert labels.shape == (70, 90) and probs.dtype == np.float32
    assert np.isfinite(probs).all()


def test_bad_inputs_and_options_are_clear_errors(tiny):
    seg = Segmenter(tiny)
    with pytest.raises(ValueError, match="empty list"):
        seg.predict([])
    with pytest.raises(ValueError, match="channels-last"):
        seg.predict(torch.zeros(40, 40, 3))
    with pytest.raises(TypeError, match="unknown Segmenter option"):
        Segmenter(tiny, crop=3)
    with pytest.raises(ValueError, match="mode must be"):
        Segmenter(tiny, mode="tiles")
    with pytest.raises(ValueError, match="minimum input size"):
        Segmenter(tiny, mode="slide", crop_size=16)
    with pytest.raises(FileNotFoundError):
        seg.predict("/nonexistent/image.png")
    with pytest.warns(UserWarning, match="0-255"):
        seg.predict(torch.rand(3, 40, 40))


def test_dataset_info_follows_the_model(tiny):
    assert Segmenter(csap_zoo.create_model("csap_tiny.cityscapes")).dataset_info.name == "cityscapes"
    info = Segmenter(tiny).dataset_info
    assert info.num_classes == 4 and len(set(info.palette)) == 4


# ---------------------------------------------------------------------- hostile inputs and bounded memory
def test_banded_resize_and_argmax_equal_the_full_size_ones():
    from csap_zoo.inference import resize_rows

    torch.manual_seed(0)
    for (h, w), (H, W) in [((13, 17), (100, 133)), ((64, 48), (512, 384)), ((90, 70), (41, 33))]:
        logits = torch.randn(1, 6, h, w)
        whole = torch.cat(list(resize_rows([logits], (h, w), (H, W), band_elements=10 ** 9)), dim=2)
        bands = [logits[:, :, i:i + 5] for i in range(0, h, 5)]
        banded = torch.cat(list(resize_rows(bands, (h, w), (H, W), band_elements=6 * W * 3)), dim=2)
        assert torch.equal(banded, whole)  # banding changes nothing
        reference = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        torch.testing.assert_close(banded, reference, atol=1e-4, rtol=0)
        top2 = reference.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # everywhere but near-ties
        assert torch.equal(banded.argmax(1)[clear], reference.argmax(1)[clear])


def _old_slide(seg, x):
    """The full-size accumulator slide inference used before it was streamed."""
    (ch, cw), (sh, sw) = seg.config.crop_size, seg.config.stride
    _, _, height, width = x.shape
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    total, count = None, torch.zeros((1, 1, height, width))
    step = seg.config.slide_batch_size
    for start in range(0, len(boxes), step):
        chunk = boxes[start:start + step]
        logits = seg.passes.forward(torch.cat([x[:, :, a:b, c:d] for a, b, c, d in chunk], dim=0))
        if total is None:
            total = torch.zeros((1, logits.shape[1], height, width))
        for i, (a, b, c, d) in enumerate(chunk):
            total[:, :, a:b, c:d] += logits[i:i + 1]
            count[:, :, a:b, c:d] += 1
    return total / count


@pytest.mark.parametrize("size,crop,stride,batch", [((333, 517), 128, 96, 4), ((200, 150), 96, 40, 3),
                                                    ((128, 300), 128, 100, 1)])
def test_streamed_slide_gives_the_same_logits_and_labels_as_one_accumulator(tiny, size, crop, stride, batch):
    seg = Segmenter(tiny, mode="slide", crop_size=crop, stride=stride, slide_batch_size=batch)
    image = _image(*size, seed=3)
    x = seg.inputs.normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    with torch.inference_mode():
        expected = _old_slide(seg, x)
        streamed = torch.cat(list(seg.passes.slide_rows(x)), dim=2)
    assert torch.equal(streamed, expected)
    np.testing.assert_array_equal(seg.predict(image), expected.max(1).indices[0].numpy())


def test_whole_mode_labels_agree_with_full_size_logits(tiny):
    """Whole mode resizes the head's stride-8 logits band by band; the labels equal those of the full-size
    F.interpolate path except at near-ties (none on these images). (Sizes where decoding is not reduced.)"""
    for size, resize in [((333, 517), None), ((300, 200), (256, 192)), ((97, 100), (256, 256))]:
        seg = Segmenter(tiny, resize=resize)
        image = _image(*size, seed=5)
        raw = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        scores, _ = seg.scores(raw)
        np.testing.assert_array_equal(seg.predict(image), scores.max(1).indices[0].numpy())


def test_non_finite_tensors_are_refused_with_the_first_index(tiny):
    seg = Segmenter(tiny)
    batch = torch.full((2, 3, 40, 40), 100.0)
    batch[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite.*\(1, 2, 3, 4\)"):
        seg.predict(batch)
    single = torch.full((3, 40, 40), 100.0)
    single[0, 5, 6] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*\(0, 5, 6\)"):
        seg.predict(single)
    with pytest.raises(ValueError, match="non-finite"):
        seg.predict(np.full((40, 40, 3), np.nan, np.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_and_tensors_in_other_float_dtypes(tiny, dtype):
    import copy

    image = _image(64, 64, seed=2)
    expected = Segmenter(tiny).predict(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1).to(dtype)
    np.testing.assert_array_equal(Segmenter(tiny).predict(tensor) if dtype == torch.float64 else
                                  Segmenter(tiny).predict(tensor).shape, expected if dtype == torch.float64 else
                                  expected.shape)
    other = copy.deepcopy(tiny).to(dtype)
    labels = Segmenter(other, optimize=False).predict(image)
    assert labels.shape == (64, 64) and labels.dtype == np.int64
    if dtype == torch.float64:
        np.testing.assert_array_equal(labels, expected)


def test_pixel_limit_names_the_image_and_how_to_raise_it(tmp_path, tiny):
    path = tmp_path / "wide.png"
    Image.new("1", (4000, 3000)).save(path)
    with pytest.raises(ValueError, match=r"wide\.png.*4000x3000.*limit of 1,000,000.*max_pixels"):
        Segmenter(tiny, max_pixels=1_000_000, resize=(64, 64)).predict(path)
    labels = Segmenter(tiny, max_pixels=20_000_000, resize=(64, 64)).predict(path)
    assert labels.shape == (3000, 4000)
    with pytest.raises(ValueError, match="max_pixels must be"):
        Segmenter(tiny, max_pixels=-1)


def test_whole_mode_refuses_inputs_above_its_limit_and_suggests_slide(tiny):
    with pytest.raises(ValueError, match=r"whole-image inference.*50x60.*whole_max_pixels=1,000.*slide"):
        Segmenter(tiny, whole_max_pixels=1000).predict(_image(50, 60))
    assert Segmenter(tiny, mode="slide", crop_size=32, stride=32, whole_max_pixels=1000).predict(
        _image(50, 60)).shape == (50, 60)


def test_reduced_decoding_for_every_input_kind(tmp_path, tiny):
    image = _image(400, 520, seed=4)
    path = tmp_path / "big.png"
    Image.fromarray(image).save(path)
    seg = Segmenter(tiny, resize=(64, 64))
    expected = seg.predict(image)
    assert expected.shape == (400, 520)
    for source in (path, Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1)):
        np.testing.assert_array_equal(seg.predict(source), expected)
    agree = (seg.predict(torch.from_numpy(image).permute(2, 0, 1).float()) == expected).mean()
    assert agree > 0.95  # float tensors are averaged without rounding to uint8


_MEMORY_CHILD = r"""
import resource, sys
import numpy as np, torch
torch.set_num_threads(1)
import csap_zoo
from csap_zoo.inference import Segmenter
side, path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
seg = Segmenter(csap_zoo.create_model("csap_tiny", num_classes=4).eval(), resize=(128, 128))
seg.predict(np.zeros((300, 300, 3), np.uint8))  # warm up kernels and allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
labels = seg.predict(path)
assert labels.shape == (side, side)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.slow
def test_peak_memory_of_predicting_a_large_file_is_bounded(tmp_path):
    """A 4096^2 RGB PNG (48 MiB decoded, 128 MiB as the returned int64 labels) with the model at 128x128, in a
    fresh child: the old pipeline held a full-size float image and (K, H, W) logits (about 700 MiB more); now the
    growth is the decoded image, the labels and bands."""
    import os
    import subprocess
    import sys

    from PIL import ImageDraw

    side, path = 4096, tmp_path / "big.png"
    ramp = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    ImageDraw.Draw(image).ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill=(200, 30, 90))
    image.save(path, compress_level=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(side), str(path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_mib = int(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 400, f"peak RSS grew by {growth_mib} MiB"


_PREDICT_PATHS_CHILD = r"""
import resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from PIL import Image
import csap_zoo
from csap_zoo.inference import Segmenter
from csap_zoo.predict import predict_paths
path, small, out = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
seg = Segmenter(csap_zoo.create_model("csap_tiny", num_classes=4).eval(), resize=(128, 128))
predict_paths(seg, [small], out, progress=False)  # warm up kernels, allocator, PNG code
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
predict_paths(seg, [path], out, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.slow
def test_peak_memory_of_writing_label_and_overlay_pngs_is_the_decoded_image_plus_a_constant(tmp_path):
    """predict_paths (what ``csap-zoo predict`` runs) on a 4096^2 RGB PNG, in a fresh child: PIL holds the decoded
    image at 4 bytes a pixel (64 MiB); everything else (model input, label rows, overlay rows, PNG encoders) is
    streamed in bands, so the peak grows by less than 100 MiB more. Writing full-size label, overlay and legend
    arrays through PIL grew by about 220 MiB more."""
    import os
    import subprocess
    import sys

    from PIL import ImageDraw

    side, path, small = 4096, tmp_path / "big.png", tmp_path / "small.png"
    ramp = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    ImageDraw.Draw(image).ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill=(200, 30, 90))
    image.save(path, compress_level=1)
    image.resize((300, 300)).save(small)
    del image
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PREDICT_PATHS_CHILD, str(path), str(small), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_mib = int(out.stdout.strip().splitlines()[-1])
    decoded_mib = side * side * 4 // 2 ** 20
    assert growth_mib - decoded_mib < 100, f"peak RSS grew by {growth_mib} MiB ({decoded_mib} MiB decoded image)"
    with Image.open(tmp_path / "out" / "labels" / "big.png") as labels:
        assert labels.size == (side, side) and labels.mode == "P"  # a palette PNG of class indices
    with Image.open(tmp_path / "out" / "overlays" / "big.png") as overlay:
        assert overlay.size[1] == side and overlay.size[0] > side and overlay.mode == "RGB"


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_several_views_merged_band_by_band_give_the_full_size_labels(tiny, monkeypatch, mode):
    """Multi-scale + flip labels come from the views' bands merged side by side; they equal the labels of the
    full-size probability average (the return_probs path)."""
    import csap_zoo.inference.bands as band_module

    monkeypatch.setattr(band_module, "BAND_ELEMENTS", 3000)
    image = _image(77, 103, seed=5)
    seg = Segmenter(tiny, mode=mode, crop_size=48, stride=32, resize=(90, 60), ratios=(0.5, 1.0, 1.5), flip=True)
    bands = list(seg.label_bands(seg.decode_raw(image, seg.decode_target)[0], (77, 103)))
    assert len(bands) > 3 and all(b.dtype == np.uint8 for b in bands)
    labels, probs = seg.predict(image, return_probs=True)
    np.testing.assert_array_equal(np.concatenate(bands), labels)
    np.testing.assert_array_equal(seg.predict(image), labels)
    assert len(np.unique(labels)) > 1


# ---------------------------------------------------------------------- label map shortcut, banded slide windows
def test_whole_mode_label_map_takes_the_shortcut_and_equals_resize_then_argmax(always_shortcut,
                                                                              interpolated_values):
    """The trained demo model on its example image, at its own size and through a resize (one and two resize
    steps): the label map equals the head's logits resized band by band and arg-maxed. The shortcut is made to
    run whatever its cost (with 6 classes the reference is cheap), and interpolated a small part of the classes x
    pixels values."""
    from csap_zoo.inference.bands import resize_rows
    from csap_zoo.models.segmentor import Segmentor

    model = Segmentor.from_pretrained(csap_zoo.__path__[0] + "/assets/demo")
    image = np.asarray(Image.open(csap_zoo.__path__[0] + "/assets/demo/example.png").convert("RGB"))
    interpolated = interpolated_values
    for resize in (None, (192, 160)):
        seg = Segmenter(model, resize=resize)
        raw, size = seg.decode_raw(image, seg.decode_target)
        view = seg.passes.view_size(*size, 1.0)
        x = raw.float() if view == size else F.interpolate(raw.float(), size=view, mode="bilinear",
                                                           align_corners=False)
        with torch.inference_mode():
            low = seg.model(seg.inputs.normalize(x), upsample=False, crop=False)
            resized, covered = seg.model.logit_geometry(*view)
            bands = list(resize_rows(resize_rows([low], tuple(low.shape[-2:]), resized, keep=covered), view, size))
        expected = torch.cat(bands, dim=2).max(dim=1).indices[0].numpy()
        np.testing.assert_array_equal(seg.predict(image), expected)
        assert interpolated and sum(interpolated) < 0.25 * low.shape[1] * size[0] * size[1]
        interpolated.clear()


@pytest.mark.parametrize("size,crop,stride,batch", [((333, 517), 128, 96, 4), ((200, 150), 96, 40, 3),
                                                    ((128, 300), 128, 100, 1), ((50, 70), 96, 64, 2)])
def test_slide_windows_are_resized_band_by_band_into_the_same_sums(tiny, monkeypatch, size, crop, stride, batch):
    """A Segmentor's slide windows keep their stride-8 logits and are resized into each band of rows: the merged
    logits equal one full-size accumulator of full-size windows to float rounding, and so do the labels (but at
    near-ties); the bands are small."""
    import csap_zoo.inference.bands as band_module

    monkeypatch.setattr(band_module, "BAND_ELEMENTS", 4 * 4096)
    seg = Segmenter(tiny, mode="slide", crop_size=crop, stride=stride, slide_batch_size=batch, resize=None)
    raw = torch.from_numpy(_image(*size, seed=3)).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        expected = _old_slide(seg, seg.inputs.normalize(raw))
        bands = list(seg.passes.view_bands(raw, size, flip=False))
    rows = 4 * 4096 // (4 * size[1])  # a band holds about BAND_ELEMENTS values (4 classes)
    assert [b.shape[2] for b in bands[:-1]] == [rows] * (len(bands) - 1) and len(bands) == -(-size[0] // rows)
    merged = torch.cat(bands, dim=2)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)
    top2 = expected.topk(2, dim=1).values
    clear = ((top2[:, 0] - top2[:, 1]) > 1e-3)[0].numpy()
    labels = seg.predict(_image(*size, seed=3))
    np.testing.assert_array_equal(labels[clear], expected.max(1).indices[0].numpy()[clear])


_SLIDE_MEMORY_CHILD = r"""
import resource, sys
import numpy as np, torch
torch.set_num_threads(1)
import csap_zoo
from csap_zoo.inference import Segmenter
torch.manual_seed(0)
model = csap_zoo.create_model("csap_tiny", num_classes=256).eval()
seg = Segmenter(model, mode="slide", crop_size=512, stride=384, slide_batch_size=1, resize=None)
seg.predict(np.zeros((96, 96, 3), np.uint8))  # warm up kernels and allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = np.random.default_rng(0).integers(0, 256, (640, 1280, 3), dtype=np.uint8)
labels = seg.predict(image)
assert labels.shape == (640, 1280)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.slow
def test_peak_memory_of_slide_inference_does_not_hold_full_size_logits():
    """256 classes, a 640x1280 image, 512 windows every 384, in a fresh child: one full-size accumulator would be
    800 MiB (and each full-size window's logits 256 MiB); the windows' stride-8 logits and one band are small."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _SLIDE_MEMORY_CHILD], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_mib = int(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 450, f"peak RSS grew by {growth_mib} MiB"  # 1898 MiB before, 231 after
