"""Segmenter's OpenVINO backend: the torch model's logits and labels, converted models cached on disk per
weights and shape, one clear error for each misuse.

A conversion (torch's ONNX exporter, then OpenVINO) costs seconds per model and input shape, so every test here
runs one small model (``model``), at one input shape (``SHAPE``) wherever it can, and the tests that only read
its converted network share one on-disk cache (``shared_cache``: one per run, shared by the xdist workers, filled
under a file lock). The tests about converting and caching (``test_converted_models_...``,
``test_both_conversion_routes_...``) and the tie test (another model) convert for real, in a cache of their own
or in memory."""
import copy
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from filelock import FileLock

import csap_zoo
from csap_zoo.inference import backends
from csap_zoo.inference.backends import OpenVINONetwork
from csap_zoo.errors import UsageError
from csap_zoo.inference import Segmenter

openvino = pytest.importorskip("openvino")

# The one input shape of the shared tests: 92 is no multiple of the stride 32, so the network pads and crops.
SHAPE = (1, 3, 64, 92)


@pytest.fixture(scope="module")
def model():
    """CSAP-T, one block per stage, seeded random weights: noise-like logits, and more classes (40) than the torch
    label-map shortcut's immediate fallback. Every test converts this one model (at ``SHAPE`` where it can)."""
    torch.manual_seed(1)
    return csap_zoo.create_model("csap_tiny", num_classes=40, backbone_args={"depths": (1, 1, 1, 1)}).eval()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A converted-model cache root for the tests that only read converted models: one per pytest run (the xdist
    workers share it; the key hashes the weights, which the seeded fixture makes the same in every worker)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / "shared_openvino_cache"


def _warm(cache, model, shape=SHAPE):
    """Convert ``model`` at ``shape`` into ``cache`` unless it is there already (one worker at a time), so that
    the test reads it from disk and converts nothing."""
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        OpenVINONetwork(model, cache_dir=cache).network_model(shape)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_openvino_backend_gives_the_torch_logits_and_labels(model, shared_cache):
    _warm(shared_cache, model)
    image = _image(*SHAPE[2:])
    reference = Segmenter(model, resize=None, optimize=False)
    seg = Segmenter(model, resize=None, backend="openvino", backend_cache_dir=shared_cache)
    x = reference.inputs.normalize(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.inference_mode():
        expected, got = reference.passes.native(x), seg.passes.native(x)
        torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
        full = reference.inference(x)
        torch.testing.assert_close(seg.inference(x), full, atol=1e-4 * float(full.abs().max()), rtol=0)
    top2 = full.topk(2, dim=1).values[0]
    clear = ((top2[0] - top2[1]) > 1e-3).numpy()
    np.testing.assert_array_equal(seg.predict(image)[clear], reference.predict(image)[clear])
    # 2 x 2 overlapping windows of the shared shape, one at a time
    slide = dict(mode="slide", crop_size=SHAPE[2:], stride=48, slide_batch_size=1, resize=None)
    big = _image(100, 140, seed=1)
    slid = Segmenter(model, backend="openvino", backend_cache_dir=shared_cache, **slide)
    agree = (slid.predict(big) == Segmenter(model, **slide).predict(big)).mean()
    assert agree > 0.99
    assert seg.network.conversions == 0 and slid.network.conversions == 0  # all read from the shared cache


def test_converted_models_are_cached_on_disk_per_weights_and_shape(model, tmp_path, monkeypatch):
    x = torch.randn(2, 3, 64, 64)  # a batch of two: the converted graph keeps the batch size too
    first = OpenVINONetwork(model, cache_dir=tmp_path)
    out = first(x)
    assert first.conversions == 1 and len(list((tmp_path / "openvino").glob("*/model.xml"))) == 1
    with torch.inference_mode():
        expected = model(x, upsample=False, crop=False)
    torch.testing.assert_close(out, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    assert first(x) is not out and first.conversions == 1  # compiled once per shape, kept in memory

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this model and shape")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    monkeypatch.setattr(torch.onnx, "export", no_conversion)
    second = OpenVINONetwork(model, cache_dir=tmp_path)  # a new process would start like this
    assert torch.equal(second(x), out) and second.conversions == 0
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    keys = {second.cache_key(x.shape), OpenVINONetwork(changed, cache_dir=tmp_path).cache_key(x.shape),
            second.cache_key((2, 3, 64, 96))}
    assert len(keys) == 3  # other weights or another shape never read this graph
    assert not list(tmp_path.rglob("*.tmp*")) and not [p for p in (tmp_path / "openvino").iterdir()
                                                        if p.name.startswith(".")]


def test_backend_misuse_gets_one_clear_error(model, monkeypatch):
    with pytest.raises(UsageError, match=r"backend must be one of \['torch', 'openvino'\], got 'onnx'"):
        Segmenter(model, backend="onnx")
    with pytest.raises(ValueError, match="runs a csap_zoo Segmentor's network; got a Conv2d"):
        Segmenter(nn.Conv2d(3, 4, 1), backend="openvino")
    with pytest.raises(ValueError, match="on the CPU in float32"):
        Segmenter(model, backend="openvino", amp="bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UsageError, match=r"needs the openvino package: pip install openvino"):
        Segmenter(model, backend="openvino")


def _clear_pixels(model, image, resize):
    """Pixels whose two best classes differ by more than float rounding in the float64 reference chain."""
    seg = Segmenter(model, resize=resize, optimize=False)
    raw = torch.from_numpy(image).permute(2, 0, 1)[None]
    view = seg.passes.view_size(*image.shape[:2], seg.config.ratios[0])
    with torch.inference_mode():
        x = seg.inputs.normalize(seg.passes.view_input(raw, view))
        low = model(x, upsample=False, crop=False).double()
        resized, (kh, kw) = model.logit_geometry(*view)
        up = torch.nn.functional.interpolate(low, size=resized, mode="bilinear", align_corners=False)[..., :kh, :kw]
        full = torch.nn.functional.interpolate(up, size=image.shape[:2], mode="bilinear", align_corners=False)
    top2 = full.topk(2, dim=1).values[0]
    return ((top2[0] - top2[1]) > 1e-4 * float(full.abs().max())).numpy()


# Each runs the network at SHAPE: the image as it is (a crop of the padded logits only), a larger image resized
# down into it, a smaller one resized up into it.
@pytest.mark.parametrize("shape,resize", [(SHAPE[2:], None), ((120, 173), (96, 64)), ((32, 46), (96, 64))],
                         ids=["native", "down", "up"])
def test_label_map_comes_out_of_openvino_with_the_torch_labels(model, shared_cache, shape, resize):
    """Whole-image label maps run the resizes and the arg-max inside OpenVINO (one call, no logits back in torch):
    the labels are the torch path's wherever two classes are not tied to rounding, for upsampling and
    downsampling chains and crops."""
    _warm(shared_cache, model)
    image = _image(*shape, seed=3)
    seg = Segmenter(model, resize=resize, backend="openvino", backend_cache_dir=shared_cache)
    got = seg.predict(image)
    assert seg.network.label_maps == 1
    assert seg.network.conversions == 0  # the network ran at SHAPE, read from the shared cache
    expected = Segmenter(model, resize=resize, optimize=False).predict(image)
    clear = _clear_pixels(model, image, resize)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert got.dtype == expected.dtype and got.shape == expected.shape


def test_label_map_graph_breaks_ties_to_the_lower_class_as_torch(model):
    """(Another model, converted here in memory without a cache: so the label-map graph is also built on a model
    straight from the converter, where the tests above build it on one read back from the cache.)"""
    tied = copy.deepcopy(model)
    with torch.no_grad():
        tied.decode_head.classifier.weight.zero_()
        tied.decode_head.classifier.bias.copy_(torch.tensor([0.0, 1.0, 1.0] + [0.5] * 37))
    image = _image(64, 80)
    seg = Segmenter(tied, resize=None, backend="openvino", backend_cache_dir=False)
    got = seg.predict(image)
    assert seg.network.label_maps == 1 and seg.network.conversions == 1
    np.testing.assert_array_equal(got, Segmenter(tied, resize=None).predict(image))
    assert (got == 1).all()


def test_score_maps_above_the_limit_take_the_banded_torch_path(model, shared_cache, monkeypatch):
    _warm(shared_cache, model)
    monkeypatch.setattr(backends, "LABEL_GRAPH_MAX_BYTES", 40 * SHAPE[2] * SHAPE[3] * 4 - 1)
    image = _image(*SHAPE[2:])
    seg = Segmenter(model, resize=None, backend="openvino", backend_cache_dir=shared_cache)
    got = seg.predict(image)
    assert seg.network.label_maps == 0
    assert seg.network.compiled_label_graphs == 0 and seg.network.conversions == 0
    clear = _clear_pixels(model, image, None)
    np.testing.assert_array_equal(got[clear], Segmenter(model, resize=None).predict(image)[clear])


def test_both_conversion_routes_give_the_torch_logits(model, shared_cache):
    """The ONNX route (default where onnx and onnxscript are installed) and openvino.convert_model's trace agree
    with torch; each route has its own cache key. (The trace route converts here, in memory; the ONNX route's
    model comes from the shared cache, which that route wrote: test_converted_models_... converts it in a fresh
    cache and checks its logits too.)"""
    pytest.importorskip("onnxscript")
    _warm(shared_cache, model)
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        expected = model(x, upsample=False, crop=False)
    onnx_route, trace_route = OpenVINONetwork(model, cache_dir=shared_cache), OpenVINONetwork(model, cache_dir=False,
                                                                                             route="trace")
    assert onnx_route.route == "onnx"
    for network in (onnx_route, trace_route):
        torch.testing.assert_close(network(x), expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    assert trace_route.conversions == 1
    assert onnx_route.cache_key(x.shape) != trace_route.cache_key(x.shape)
    with pytest.raises(UsageError, match=r"route must be one of \['onnx', 'trace'\] or None, got 'tflite'"):
        OpenVINONetwork(model, route="tflite")


def test_label_map_graphs_held_in_memory_are_bounded(model, shared_cache):
    """Each label-map graph keeps its full-size scores while compiled: a folder of images of many sizes keeps only
    the most recent ``max_label_graphs`` of them (and stays correct when an evicted size comes back). The sizes
    are resized into one network input (one converted network), each with its own resizes: its own graph."""
    _warm(shared_cache, model)
    resize = (96, 64)
    seg = Segmenter(model, resize=resize, backend="openvino", backend_cache_dir=shared_cache)
    reference = Segmenter(model, resize=resize)
    sizes = [SHAPE[2:], (32, 46), (128, 184), SHAPE[2:]]
    for h, w in sizes:
        image = _image(h, w, seed=h + w)
        got = seg.predict(image)
        clear = _clear_pixels(model, image, resize)
        np.testing.assert_array_equal(got[clear], reference.predict(image)[clear])
        assert seg.network.compiled_label_graphs <= 2
    assert seg.network.label_maps == 4 and seg.network.compiled_label_graphs == 2
    assert seg.network.conversions == 0  # one network input (SHAPE) for every size, read from the shared cache
