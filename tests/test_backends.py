"""Segmenter's OpenVINO backend: the torch model's logits and labels, converted models cached on disk per
weights and shape, one clear error for each misuse."""
import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import csap_zoo
from csap_zoo import backends
from csap_zoo.backends import OpenVINONetwork
from csap_zoo.errors import UsageError
from csap_zoo.inference import Segmenter

openvino = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=5).eval()


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_openvino_backend_gives_the_torch_logits_and_labels(tiny, tmp_path):
    image = _image(72, 100)
    reference = Segmenter(tiny, resize=None, optimize=False)
    seg = Segmenter(tiny, resize=None, backend="openvino", backend_cache_dir=tmp_path)
    x = reference._normalize(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.inference_mode():
        expected, got = reference._native(x), seg._native(x)
        torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
        full = reference.inference(x)
        torch.testing.assert_close(seg.inference(x), full, atol=1e-4 * float(full.abs().max()), rtol=0)
    top2 = full.topk(2, dim=1).values[0]
    clear = ((top2[0] - top2[1]) > 1e-3).numpy()
    np.testing.assert_array_equal(seg.predict(image)[clear], reference.predict(image)[clear])
    slide = dict(mode="slide", crop_size=64, stride=48, resize=None)
    agree = (Segmenter(tiny, backend="openvino", backend_cache_dir=tmp_path, **slide).predict(image)
             == Segmenter(tiny, **slide).predict(image)).mean()
    assert agree > 0.99


def test_converted_models_are_cached_on_disk_per_weights_and_shape(tiny, tmp_path, monkeypatch):
    x = torch.randn(1, 3, 64, 64)
    first = OpenVINONetwork(tiny, cache_dir=tmp_path)
    out = first(x)
    assert first.conversions == 1 and len(list((tmp_path / "openvino").glob("*/model.xml"))) == 1
    assert first(x) is not out and first.conversions == 1  # compiled once per shape, kept in memory

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this model and shape")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    monkeypatch.setattr(torch.onnx, "export", no_conversion)
    second = OpenVINONetwork(tiny, cache_dir=tmp_path)  # a new process would start like this
    assert torch.equal(second(x), out) and second.conversions == 0
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    keys = {second.cache_key(x.shape), OpenVINONetwork(changed, cache_dir=tmp_path).cache_key(x.shape),
            second.cache_key((1, 3, 64, 96))}
    assert len(keys) == 3  # other weights or another shape never read this graph
    assert not list(tmp_path.rglob("*.tmp*")) and not [p for p in (tmp_path / "openvino").iterdir()
                                                        if p.name.startswith(".")]


def test_backend_misuse_gets_one_clear_error(tiny, monkeypatch):
    with pytest.raises(UsageError, match=r"backend must be one of \['torch', 'openvino'\], got 'onnx'"):
        Segmenter(tiny, backend="onnx")
    with pytest.raises(ValueError, match="runs a csap_zoo Segmentor's network; got a Conv2d"):
        Segmenter(nn.Conv2d(3, 4, 1), backend="openvino")
    with pytest.raises(ValueError, match="on the CPU in float32"):
        Segmenter(tiny, backend="openvino", amp="bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UsageError, match=r"needs the openvino package: pip install openvino"):
        Segmenter(tiny, backend="openvino")


@pytest.fixture(scope="module")
def many():
    """More classes than the torch label-map shortcut's immediate fallback, random (noise-like) logits."""
    torch.manual_seed(1)
    return csap_zoo.create_model("csap_tiny", num_classes=40).eval()


def _clear_pixels(model, image, resize):
    """Pixels whose two best classes differ by more than float rounding in the float64 reference chain."""
    seg = Segmenter(model, resize=resize, optimize=False)
    raw = torch.from_numpy(image).permute(2, 0, 1)[None]
    view = seg._view_size(*image.shape[:2], seg.config.ratios[0])
    with torch.inference_mode():
        x = seg._normalize(seg._view_input(raw, view))
        low = model(x, upsample=False, crop=False).double()
        resized, (kh, kw) = model.logit_geometry(*view)
        up = torch.nn.functional.interpolate(low, size=resized, mode="bilinear", align_corners=False)[..., :kh, :kw]
        full = torch.nn.functional.interpolate(up, size=image.shape[:2], mode="bilinear", align_corners=False)
    top2 = full.topk(2, dim=1).values[0]
    return ((top2[0] - top2[1]) > 1e-4 * float(full.abs().max())).numpy()


@pytest.mark.parametrize("shape,resize", [((120, 173), None), ((120, 173), (96, 64)), ((40, 52), (160, 128))])
def test_label_map_comes_out_of_openvino_with_the_torch_labels(many, shape, resize):
    """Whole-image label maps run the resizes and the arg-max inside OpenVINO (one call, no logits back in torch):
    the labels are the torch path's wherever two classes are not tied to rounding, for upsampling and
    downsampling chains and crops."""
    image = _image(*shape, seed=3)
    seg = Segmenter(many, resize=resize, backend="openvino", backend_cache_dir=False)
    got = seg.predict(image)
    assert seg.network.label_maps == 1
    expected = Segmenter(many, resize=resize, optimize=False).predict(image)
    clear = _clear_pixels(many, image, resize)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert got.dtype == expected.dtype and got.shape == expected.shape


def test_label_map_graph_breaks_ties_to_the_lower_class_as_torch(many):
    tied = copy.deepcopy(many)
    with torch.no_grad():
        tied.decode_head.classifier.weight.zero_()
        tied.decode_head.classifier.bias.copy_(torch.tensor([0.0, 1.0, 1.0] + [0.5] * 37))
    image = _image(64, 80)
    seg = Segmenter(tied, resize=None, backend="openvino", backend_cache_dir=False)
    got = seg.predict(image)
    assert seg.network.label_maps == 1
    np.testing.assert_array_equal(got, Segmenter(tied, resize=None).predict(image))
    assert (got == 1).all()


def test_score_maps_above_the_limit_take_the_banded_torch_path(many, monkeypatch):
    monkeypatch.setattr(backends, "LABEL_GRAPH_MAX_BYTES", 40 * 64 * 80 * 4 - 1)
    image = _image(64, 80)
    seg = Segmenter(many, resize=None, backend="openvino", backend_cache_dir=False)
    got = seg.predict(image)
    assert seg.network.label_maps == 0
    clear = _clear_pixels(many, image, None)
    np.testing.assert_array_equal(got[clear], Segmenter(many, resize=None).predict(image)[clear])


def test_both_conversion_routes_give_the_torch_logits(tiny):
    """The ONNX route (default where onnx and onnxscript are installed) and openvino.convert_model's trace agree
    with torch; each route has its own cache key."""
    pytest.importorskip("onnxscript")
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = tiny(x, upsample=False, crop=False)
    onnx_route, trace_route = OpenVINONetwork(tiny, cache_dir=False), OpenVINONetwork(tiny, cache_dir=False,
                                                                                      route="trace")
    assert onnx_route.route == "onnx"
    for network in (onnx_route, trace_route):
        torch.testing.assert_close(network(x), expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    assert onnx_route.cache_key(x.shape) != trace_route.cache_key(x.shape)
    with pytest.raises(UsageError, match=r"route must be one of \['onnx', 'trace'\] or None, got 'tflite'"):
        OpenVINONetwork(tiny, route="tflite")


def test_label_map_graphs_held_in_memory_are_bounded(tiny):
    """Each label-map graph keeps its full-size scores while compiled: a folder of images of many sizes keeps only
    the most recent ``max_label_graphs`` of them (and stays correct when an evicted size comes back)."""
    seg = Segmenter(tiny, resize=None, backend="openvino", backend_cache_dir=False)
    sizes = [(64, 64), (64, 96), (96, 64), (64, 64)]
    for h, w in sizes:
        image = _image(h, w, seed=h + w)
        got = seg.predict(image)
        clear = _clear_pixels(tiny, image, None)
        np.testing.assert_array_equal(got[clear], Segmenter(tiny, resize=None).predict(image)[clear])
        assert seg.network.compiled_label_graphs <= 2
    assert seg.network.label_maps == 4 and seg.network.compiled_label_graphs == 2
