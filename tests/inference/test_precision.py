"""Precisions: what each runs as, that it stays within its stated tolerance of fp32 on the bundled demo model
(trained weights, so label agreement means something), that int8 graphs are cached per calibration set, and
that the CPU's instructions are read right.

Tolerances (label agreement with fp32 on generated shapes images): bf16 >= 99.5% (torch and OpenVINO), int8 >=
98%. ``benchmarks/precision.py`` measures agreement and mIoU on the demo's validation split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import csap_zoo
from csap_zoo.data.synthetic import render_shapes_sample
from csap_zoo.errors import UsageError
from csap_zoo.inference import Segmenter, cpu_info, precision

pytest.importorskip("openvino")

BF16_AGREEMENT, INT8_AGREEMENT = 0.995, 0.98
needs_bf16 = pytest.mark.skipif(not cpu_info().bf16, reason="this CPU has no bf16 instructions")


@pytest.fixture(scope="module")
def demo():
    return csap_zoo.create_model("csap_tiny.shapes", pretrained=True).eval()


@pytest.fixture(scope="module")
def images():
    return [render_shapes_sample(5000 + i, (96, 112))[0] for i in range(4)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("precision_cache")


@pytest.fixture(scope="module")
def reference(demo, images):
    seg = Segmenter(demo, backend="torch")
    return [seg.predict(image) for image in images]


def _agreement(seg, images, reference):
    return float(np.mean([(seg.predict(image) == ref).mean() for image, ref in zip(images, reference)]))


@needs_bf16
def test_bf16_stays_within_its_tolerance_on_both_backends(demo, images, reference, cache):
    torch_bf16 = Segmenter(demo, backend="torch", precision="bf16")
    assert next(torch_bf16.model.parameters()).dtype == torch.bfloat16
    assert next(demo.parameters()).dtype == torch.float32
    assert _agreement(torch_bf16, images, reference) >= BF16_AGREEMENT
    ov_bf16 = Segmenter(demo, backend="openvino", precision="bf16", backend_cache_dir=cache)
    assert ov_bf16.network.precision == "bf16"
    assert _agreement(ov_bf16, images, reference) >= BF16_AGREEMENT


def test_int8_stays_within_its_tolerance_and_is_cached_per_calibration_set(demo, images, reference, cache):
    pytest.importorskip("nncf")
    seg = Segmenter(demo, backend="openvino", precision="int8", calibration=images[:3], backend_cache_dir=cache)
    assert _agreement(seg, images, reference) >= INT8_AGREEMENT
    assert seg.network.quantizations == 1
    again = Segmenter(demo, backend="openvino", precision="int8", calibration=images[:3], backend_cache_dir=cache)
    assert again.network.cache_key() == seg.network.cache_key()
    # (int8 kernels of a static compile round a few near-tied pixels differently from the dynamic graph's, so the
    # two are compared like any two runs of the precision)
    assert (again.predict(images[3]) == seg.predict(images[3])).mean() >= 0.995
    assert again.network.quantizations == 0 and again.network.conversions == 0  # both read from the cache
    other = Segmenter(demo, backend="openvino", precision="int8", calibration=images[1:], backend_cache_dir=cache)
    assert other.network.cache_key() != seg.network.cache_key()  # another calibration set: another graph


def test_bf16_on_a_cpu_without_bf16_is_one_clear_error(demo, monkeypatch):
    plain = precision.CpuInfo("Test CPU 9000", 2, ("avx2",))
    monkeypatch.setattr(precision, "cpu_info", lambda: plain)
    for backend in ("torch", "openvino"):
        with pytest.raises(UsageError, match=r"needs bf16 instructions .* Test CPU 9000 \(2 cores; avx2\)"):
            Segmenter(demo, backend=backend, precision="bf16")


def test_cpu_info_reads_the_model_and_the_flags_that_matter(tmp_path):
    text = ("processor\t: 0\nmodel name\t: Example Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile "
            "amx_bf16 avx512_bf16 amx_int8\n\nprocessor\t: 1\nmodel name\t: Example Xeon\n")
    (tmp_path / "cpuinfo").write_text(text)
    info = precision.cpu_info(str(tmp_path / "cpuinfo"))
    assert info.model == "Example Xeon" and info.bf16 and info.amx
    assert info.flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    (tmp_path / "avx2").write_text("model name\t: Example EPYC\nflags\t\t: fpu avx2 fma\n")
    older = precision.cpu_info(str(tmp_path / "avx2"))
    assert older.flags == ("avx2",) and not older.bf16 and not older.amx
    assert older.to_dict()["model"] == "Example EPYC"
