"""csap_zoo.tools.measurement / profiling and benchmarks/latency.py: statistics, table, targets, a tiny run."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from csap_zoo.tools.measurement import LatencyStats, measure_interleaved, measure_latency, peak_rss_mb
from csap_zoo.tools.profiling import BenchResult, bench_cuda_throughput, bench_head, bench_model, peak_memory_mb

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "latency.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_script():
    spec = importlib.util.spec_from_file_location("latency_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stats(ms):
    return LatencyStats(ms, ms * 1.1, ms, ms * 0.9, 10)


def test_latency_stats_median_and_nearest_rank_p90():
    s = LatencyStats.from_times([0.001 * v for v in (5, 1, 4, 2, 3, 10, 6, 7, 8, 9)])
    assert s.median_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(9.0)  # 9th of 10 sorted values
    assert s.min_ms == pytest.approx(1.0) and s.runs == 10
    with pytest.raises(ValueError):
        LatencyStats.from_times([])


def test_measure_latency_counts_calls_and_restores_threads():
    calls = []
    before = torch.get_num_threads()
    s = measure_latency(lambda: calls.append(torch.get_num_threads()), warmup=2, repeats=5, num_threads=1)
    assert len(calls) == 7 and set(calls) == {1} and s.runs == 5
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        measure_latency(lambda: None, repeats=0)


def test_peak_rss_sees_a_large_allocation():
    pytest.importorskip("psutil")
    grown = peak_rss_mb(lambda: torch.ones(64, 1024, 1024).sum())  # 256 MiB
    assert grown > 100


def test_table_ratios_and_targets():
    script = load_script()
    results = [
        BenchResult("csap_tiny", 512, 512, 2, 4.66, 5.32, stats(70.0), stats(60.0), stats(50.0), 1e-5, 100.0,
                    optimized=stats(40.0)),
        BenchResult("segnext_tiny", 512, 512, 2, 4.26, 6.45, stats(100.0), optimized=stats(45.0)),
        BenchResult("segformer_b0", 512, 512, 2, 3.75, None, stats(100.0), channels_last=stats(90.0)),
    ]
    heads = [BenchResult("csap_tiny head", 512, 512, 2, 0.76, None, stats(4.0), optimized=stats(3.0)),
             BenchResult("segnext_tiny head", 512, 512, 2, 0.36, None, stats(10.0), optimized=stats(5.0))]
    table = script.format_table(results)
    assert "| csap_tiny | 4.66 | 5.32 | 70.0 / 77.0 | 60.0 | 40.0 | 50.0 | 100 | 1.00x | 1.00x |" in table
    assert "| 1.43x | 1.12x |" in table  # SegNeXt-T: 100/70 eager, 45/40 optimized
    assert "| 1.43x | 2.25x |" in table  # SegFormer: no optimized variant, its best (channels_last 90) / 40
    assert "| 2.50x | 1.67x |" in script.format_head_table(heads)
    lines = script.targets(results, heads)
    assert lines[0].startswith("- CSAP-T / segnext_tiny latency, eager: 0.70x (target <= 0.8x) met")
    assert lines[1].startswith("- CSAP-T / segnext_tiny latency, optimized: 0.89x (target <= 0.8x) NOT met")
    assert "segformer_b0 latency, eager: 0.70x" in lines[2] and "NOT met" in lines[2]
    assert "segformer_b0 latency, optimized: 0.44x (target <= 0.6x) met" in lines[3]
    assert "eager / onnxruntime (speed-up): 1.40x (target >= 1.3x) met" in lines[4]
    assert "optimized / onnxruntime (speed-up): 0.80x (target >= 1.3x) NOT met" in lines[5]
    assert "Ham head latency, eager: 0.40x (target <= 0.5x) met" in lines[6]
    assert "Ham head latency, optimized: 0.60x (target <= 0.5x) NOT met" in lines[7]


def test_best_variant_is_the_fastest_median():
    r = BenchResult("m", 64, 64, 1, 1.0, None, stats(30.0), channels_last=stats(20.0), optimized=stats(25.0))
    assert r.best.median_ms == 20.0


def test_interleaved_timing_runs_every_callable_round_robin_with_a_rotating_start():
    order = []
    out = measure_interleaved({k: (lambda k=k: order.append(k)) for k in "abc"}, warmup=1, repeats=4)
    assert order == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")  # rotating start
    assert out["a"].runs == 4 and out["c"].runs == 4
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_interleaved({"a": lambda: None}, repeats=0)


def test_bench_model_and_heads_small():
    result = bench_model("csap_tiny", 64, 64, warmup=0, repeats=2, num_threads=1, memory=False, gmacs=False)
    assert result.latency.runs == 2 and result.channels_last is not None and result.params_m > 4
    assert result.optimized is not None and result.optimized.runs == 2
    heads = bench_head(height=64, width=64, warmup=0, repeats=1, num_threads=1)
    assert [h.name for h in heads] == ["csap_tiny head", "segnext_tiny head"]
    assert all(h.latency.runs == 1 and h.optimized.runs == 1 for h in heads)


def test_segformer_reference_builds_without_download():
    pytest.importorskip("transformers")
    from csap_zoo.tools.profiling import build_bench_model

    model = build_bench_model("segformer_b0")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 150, 16, 16)  # stride-4 native logits
    assert 3.5 < sum(p.numel() for p in model.parameters()) / 1e6 < 4.0  # SegFormer-B0: 3.7 M


def test_script_end_to_end_tiny(tmp_path, capsys):
    rc = load_script().main(["--models", "csap_tiny", "segnext_tiny", "--size", "64", "64", "--warmup", "0",
                             "--repeats", "1", "--head-repeats", "1", "--threads", "1", "--onnx", "--no-memory",
                             "--no-gmacs", "--cuda", "--cuda-batch", "1", "--json", str(tmp_path / "lat.json"), "--png", str(tmp_path / "lat.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| csap_tiny |" in out and "| segnext_tiny head |" in out and "CSAP head / Ham head" in out
    assert ("no CUDA device: GPU throughput skipped" in out) != torch.cuda.is_available()
    data = json.loads((tmp_path / "lat.json").read_text())
    assert [m["name"] for m in data["models"]] == ["csap_tiny", "segnext_tiny"] and "machine" in data
    assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_model_with_onnxruntime(monkeypatch):
    """CSAP-T with one block per stage, exported as a static graph for the benchmarked input: what is under test is
    bench_model's onnxruntime variant (export at the input's size, session, timing, difference to eager); the
    dynamic export itself is tests/tools/test_export.py's, and costs several times as much."""
    pytest.importorskip("onnxruntime")
    import csap_zoo.tools.export as export

    exported = []
    real_export = export.export_onnx

    def static_export(model, path, height, width, **kwargs):
        exported.append((height, width, kwargs))
        return real_export(model, path, height, width, dynamic=False, **kwargs)

    monkeypatch.setattr(export, "export_onnx", static_export)
    result = bench_model("csap_tiny", 64, 96, warmup=0, repeats=2, num_threads=1, memory=False, gmacs=False,
                         channels_last=False, onnx=True, backbone_args={"depths": (1, 1, 1, 1)})
    assert exported == [(64, 96, {"upsample": False, "check": False})]  # at the input's size, native logits
    assert result.onnxruntime.runs == 2 and result.onnx_max_abs_diff < 1e-4


@pytest.mark.slow
def test_peak_memory_in_a_fresh_process():
    pytest.importorskip("psutil")
    small = peak_memory_mb("csap_tiny", 64, 64)
    large = peak_memory_mb("csap_tiny", 384, 384)
    assert 0 <= small < large  # activations grow with the input


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_throughput_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        bench_cuda_throughput("csap_tiny")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_throughput_on_a_gpu():
    results = bench_cuda_throughput("csap_tiny", batch=2, height=64, width=64, dtypes=("fp32", "bf16"),
                                    warmup=1, repeats=2)
    assert [(r.dtype, r.channels_last) for r in results] == [("fp32", False), ("bf16", False), ("fp32", True),
                                                             ("bf16", True)]
    assert all(r.images_per_s > 0 and r.peak_mem_mb > 0 for r in results)
