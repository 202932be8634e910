"""Segmenter's OpenVINO backend: the torch model's logits and labels, one conversion for every input size cached
on disk, static compiles for shapes that repeat, one clear error for each misuse, and what ``backend="auto"``
picks (with and without openvino).

A conversion costs a second or two for the small model here, so every test runs one small model (``model``), and
the tests that only read its converted network share one on-disk cache (``shared_cache``: one per run, shared by
the xdist workers, filled under a file lock). The tests about converting and caching and the tie test (another
model) convert for real, in a cache of their own or in memory."""
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

# The main input shape of the shared tests: 92 is no multiple of the stride 32, so the network pads and crops.
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


def _warm(cache, model):
    """Convert ``model`` into ``cache`` unless it is there already (one worker at a time), so that the test reads
    it from disk and converts nothing."""
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        OpenVINONetwork(model, cache_dir=cache).network_model()


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


def test_one_conversion_serves_every_shape_and_is_cached_on_disk(model, tmp_path, monkeypatch):
    shapes = [(2, 3, 64, 64), (1, 3, 45, 70), (1, 3, 96, 33)]  # batches, odd sizes: one dynamic-shape graph
    first = OpenVINONetwork(model, cache_dir=tmp_path)
    outs = [first(torch.randn(shape, generator=torch.Generator().manual_seed(i))) for i, shape in enumerate(shapes)]
    assert first.conversions == 1 and len(list((tmp_path / "openvino").glob("*/model.xml"))) == 1
    for i, (shape, out) in enumerate(zip(shapes, outs)):
        with torch.inference_mode():
            expected = model(torch.randn(shape, generator=torch.Generator().manual_seed(i)), upsample=False,
                             crop=False)
        torch.testing.assert_close(out, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
        assert first.native_shape(shape) == tuple(expected.shape)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = OpenVINONetwork(model, cache_dir=tmp_path)  # a new process would start like this
    x = torch.randn(shapes[1], generator=torch.Generator().manual_seed(1))
    assert torch.equal(second(x), outs[1]) and second.conversions == 0
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    assert second.cache_key() != OpenVINONetwork(changed, cache_dir=tmp_path).cache_key()
    assert not list(tmp_path.rglob("*.tmp*")) and not [p for p in (tmp_path / "openvino").iterdir()
                                                        if p.name.startswith(".")]


def test_a_shape_that_comes_a_third_time_gets_its_own_static_compile(model, shared_cache):
    """New shapes run on the dynamic graph at once (no compile per image); the third call of a shape compiles it
    statically (faster from then on), with the same logits; at most ``max_shapes`` static compiles are kept."""
    _warm(shared_cache, model)
    network = OpenVINONetwork(model, cache_dir=shared_cache, max_shapes=1)
    x, other = torch.randn(SHAPE), torch.randn(1, 3, 64, 64)
    outs = []
    for _ in range(3):
        outs.append(network(x))
        assert network.static_compiles == (len(outs) == 3)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-4 * float(outs[0].abs().max()), rtol=0)
    for _ in range(3):
        network(other)
    assert network.static_compiles == 2 and list(network._static.items) == [tuple(other.shape)]
    assert network.conversions == 0


def test_a_graph_with_random_bases_stays_on_the_dynamic_compile():
    """SegNeXt's NMF draws random bases (a RandomUniform node): OpenVINO's CPU plugin crashes compiling that graph
    reshaped to a static shape, so it never gets one, however often a shape comes."""
    torch.manual_seed(0)
    segnext = csap_zoo.create_model("segnext_tiny", num_classes=5, backbone_args={"depths": (1, 1, 1, 1)}).eval()
    seg = Segmenter(segnext, resize=None, backend="openvino", backend_cache_dir=False)
    for _ in range(4):
        assert seg.predict(_image(64, 64)).shape == (64, 64)
    assert seg.network.static_shapes is False and seg.network.static_compiles == 0
    assert seg.network.label_maps == 4


def test_backend_misuse_gets_one_clear_error(model, monkeypatch):
    with pytest.raises(UsageError, match=r"backend must be one of \['auto', 'torch', 'openvino'\], got 'onnx'"):
        Segmenter(model, backend="onnx")
    with pytest.raises(UsageError, match="runs a csap_zoo Segmentor's network; got a Conv2d"):
        Segmenter(nn.Conv2d(3, 4, 1), backend="openvino")
    with pytest.raises(UsageError, match="precision='fp16' runs on CUDA only"):
        Segmenter(model, backend="openvino", precision="fp16")
    with pytest.raises(UsageError, match="precision=.int8. runs on the OpenVINO backend"):
        Segmenter(model, backend="torch", precision="int8")
    with pytest.raises(UsageError, match="needs calibration images"):
        Segmenter(model, backend="openvino", precision="int8")
    with pytest.raises(UsageError, match="used by precision='int8' only"):
        Segmenter(model, backend="openvino", calibration=[_image(32, 32)])
    monkeypatch.setenv("CSAP_ZOO_BACKEND", "tensorrt")
    with pytest.raises(UsageError, match="CSAP_ZOO_BACKEND='tensorrt' is not a backend"):
        Segmenter(model)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UsageError, match=r"needs the openvino package \(pip install openvino\)"):
        Segmenter(model, backend="openvino")


def test_auto_runs_openvino_on_the_cpu_and_torch_elsewhere(model, shared_cache, monkeypatch):
    """The default pick: OpenVINO for a Segmentor on the CPU; torch for other modules, under
    ``CSAP_ZOO_BACKEND=torch``, and on a machine without openvino (where predictions still work)."""
    _warm(shared_cache, model)
    monkeypatch.delenv("CSAP_ZOO_BACKEND")
    image = _image(*SHAPE[2:])
    seg = Segmenter(model, resize=None, backend_cache_dir=shared_cache)
    assert seg.backend == "openvino" and seg.network is not None
    assert Segmenter(nn.Conv2d(3, 4, 1)).backend == "torch"
    monkeypatch.setenv("CSAP_ZOO_BACKEND", "torch")
    assert Segmenter(model).backend == "torch"
    int8 = Segmenter(model, precision="int8", calibration=[image], backend_cache_dir=shared_cache)
    assert int8.backend == "openvino" and int8.network.quantizations == 0  # only OpenVINO runs int8; lazily
    assert Segmenter(model, backend="openvino", backend_cache_dir=shared_cache).backend == "openvino"  # explicit wins
    monkeypatch.delenv("CSAP_ZOO_BACKEND")
    monkeypatch.setitem(sys.modules, "openvino", None)  # a machine without openvino
    without = Segmenter(model, resize=None)
    assert without.backend == "torch" and without.network is None
    clear = _clear_pixels(model, image, None)
    np.testing.assert_array_equal(without.predict(image)[clear], seg.predict(image)[clear])


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
    assert seg.network.conversions == 0  # read from the shared cache
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


def test_label_map_graphs_held_in_memory_are_bounded(model, shared_cache):
    """A new size takes the label-map graph whose sizes are inputs (one per chain structure); a size that comes a
    third time gets its own static graph, which keeps its full-size scores while compiled: only the most recent
    ``max_label_graphs`` of them are kept, and an evicted size that comes back is still right."""
    _warm(shared_cache, model)
    resize = (96, 64)
    seg = Segmenter(model, resize=resize, backend="openvino", backend_cache_dir=shared_cache)
    reference = Segmenter(model, resize=resize)
    sizes = [SHAPE[2:], (32, 46), (128, 184)] * 3 + [SHAPE[2:]]
    for h, w in sizes:
        image = _image(h, w, seed=h + w)
        got = seg.predict(image)
        clear = _clear_pixels(model, image, resize)
        np.testing.assert_array_equal(got[clear], reference.predict(image)[clear])
        assert seg.network.compiled_label_graphs <= 2
    assert seg.network.label_maps == len(sizes) and seg.network.compiled_label_graphs == 2
    assert seg.network.conversions == 0  # one network for every size, read from the shared cache
