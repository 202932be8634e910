"""benchmarks/runtimes.py: contender selection, targets, the shared post-processing, and tiny end-to-end runs."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from csap_zoo.inference.precision import CpuInfo, cpu_info
from csap_zoo.tools import runtimes
from csap_zoo.tools.measurement import measure_interleaved
from csap_zoo.tools.runtimes import RuntimeCase, label_map

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "runtimes.py"
ALL_CONTENDERS = ["csap_tiny|csap-zoo|fp32", "csap_tiny|csap-zoo-torch|fp32", "csap_tiny|onnxruntime|fp32",
                  "csap_tiny|openvino|fp32", "csap_tiny|openvino-labels|fp32", "segnext_tiny|csap-zoo|fp32",
                  "segnext_tiny|csap-zoo-torch|fp32", "segnext_tiny|onnxruntime|fp32", "segnext_tiny|openvino|fp32",
                  "segnext_tiny|openvino-labels|fp32", "segformer_b0|torch|fp32", "segformer_b0|onnxruntime|fp32",
                  "segformer_b0|openvino|fp32"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_script():
    spec = importlib.util.spec_from_file_location("runtimes_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The script's ``main`` run once per argument list, all in ONE fresh interpreter: a child process rather than this
# one (the runs are mostly torch's ONNX exporter, which a coverage tracer here slows down ~1.8x), one for every run
# (the imports of torch, onnx, OpenVINO and transformers, and the exporter's first-use set-up, are paid once).
_DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("runtimes_script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
for argv in json.loads(sys.argv[2]):
    code = script.main(argv)
    if code:
        sys.exit(code)
"""


def run_script(*runs: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CSAP_ZOO_BACKEND")  # csap-zoo's default path is what the script times
    return subprocess.run([sys.executable, "-c", _DRIVER, str(SCRIPT), json.dumps(list(runs))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_default_contenders_add_batched_torch_for_a_batch_and_skip_csap_zoo_for_segformer(monkeypatch):
    script = load_script()
    fp32 = ["fp32"]
    assert ["|".join(t) for t in script.contenders_for(script.DEFAULT_MODELS, None, 1, precisions=fp32)] == \
        ALL_CONTENDERS
    batched = script.contenders_for(["csap_tiny"], None, 8, precisions=fp32)
    assert [r for _, r, _ in batched] == ["csap-zoo", "csap-zoo-torch", "torch", "onnxruntime", "openvino"]
    assert "openvino-labels" not in [r for _, r, _ in script.contenders_for(["csap_tiny"], None, 1, whole=False)]
    chosen = script.contenders_for(["csap_tiny", "segformer_b0"], ["csap-zoo", "openvino"], 1, precisions=fp32)
    assert chosen == [("csap_tiny", "csap-zoo", "fp32"), ("csap_tiny", "openvino", "fp32"),
                      ("segformer_b0", "openvino", "fp32")]
    # every precision each runtime has on this CPU: bf16 only with bf16 instructions
    monkeypatch.setattr(runtimes, "cpu_info", lambda: CpuInfo("x", 2, ("avx2",)))
    assert script.contenders_for(["segformer_b0"], None, 1) == [
        ("segformer_b0", "torch", "fp32"), ("segformer_b0", "onnxruntime", "fp32"),
        ("segformer_b0", "openvino", "fp32"), ("segformer_b0", "openvino", "int8")]
    monkeypatch.setattr(runtimes, "cpu_info", lambda: CpuInfo("x", 2, ("avx2", "avx512_bf16")))
    assert [p for _, r, p in script.contenders_for(["csap_tiny"], None, 1) if r == "csap-zoo"] == \
        ["fp32", "bf16", "int8"]
    with pytest.raises(ValueError, match="runs .*'fp32'.*, not 'int8'"):
        RuntimeCase("csap_tiny", "onnxruntime", onnx_path="x.onnx", precision="int8")


def test_targets_from_medians():
    script = load_script()

    def row(model, runtime, ms, precision="fp32", floor=10.0):
        return {"key": f"{model}|{runtime}|{precision}", "model": model, "runtime": runtime, "precision": precision,
                "median_ms": ms, "floor_ms": floor}

    rows = [row("csap_tiny", "csap-zoo", 40.0, floor=30.0), row("csap_tiny", "csap-zoo-torch", 38.0, floor=30.0),
            row("csap_tiny", "csap-zoo", 24.0, "int8", floor=30.0), row("csap_tiny", "onnxruntime", 50.0),
            row("csap_tiny", "openvino", 37.0), row("csap_tiny", "openvino", 25.0, "int8"),
            row("segnext_tiny", "csap-zoo", 60.0), row("segnext_tiny", "openvino", 30.0, "int8"),
            row("segformer_b0", "torch", 120.0), row("segformer_b0", "openvino", 50.0, "bf16")]
    lines = script.target_lines(script.targets(rows, bf16_cpu=True))
    assert lines == [
        "- CSAP-T default path (Segmenter(model), fp32) / its fastest fp32 path: 1.05x (target <= 1.1x) met",
        "- CSAP-T best path (csap-zoo, int8) / fastest SegNeXt-T: 0.80x (target <= 0.83x) met",  # 24 / 30
        "- CSAP-T best path (csap-zoo, int8) / fastest SegFormer-B0: 0.48x (target <= 0.4x) NOT met",  # 24 / 50
        "- CSAP-T csap-zoo fp32 / fastest other CSAP-T fp32 (openvino; faster): 1.03x (target < 1.0x) NOT met",
        "- CSAP-T csap-zoo int8 / fastest other CSAP-T int8 (openvino; faster): 0.96x (target < 1.0x) met",
        "- CSAP-T best path (csap-zoo, int8) / CSAP-T fp32 compute floor: 0.80x (target <= 1.0x) met",
    ]
    partial = script.targets([r for r in rows if r["model"] == "csap_tiny"], bf16_cpu=False)
    assert partial[1]["met"] is None and "not evaluated" in script.target_lines(partial)[1]
    assert "no bf16 instructions" in script.target_lines(partial)[-1]


def test_cityscapes_windows_and_network_shapes():
    case = RuntimeCase("csap_tiny", "csap-zoo", 1024, 2048, mode="slide", crop=1024, stride=768)
    assert case.windows() == 3 and case.network_shapes() == [(3, 3, 1024, 1024)]
    assert RuntimeCase("csap_tiny", "torch", 512, 512, batch=8).network_shapes() == [(8, 3, 512, 512)]
    assert RuntimeCase("csap_tiny", "csap-zoo", 512, 512, batch=8).network_shapes() == [(1, 3, 512, 512)]
    with pytest.raises(ValueError, match="divisible by 32"):
        RuntimeCase("csap_tiny", "onnxruntime", 500, 512, onnx_path="x.onnx")
    with pytest.raises(ValueError, match="csap_zoo models only"):
        RuntimeCase("segformer_b0", "csap-zoo")
    with pytest.raises(ValueError, match="whole images one at a time"):
        RuntimeCase("csap_tiny", "openvino-labels", batch=8, onnx_path="x.onnx")


def test_static_exports_only_where_the_contenders_need_one_network_shape():
    script = load_script()
    slide = dict(mode="slide", crop=64, stride=32, slide_batch=4, onnx_path="x.onnx")
    cases = [RuntimeCase("csap_tiny", "csap-zoo", 64, 64), RuntimeCase("csap_tiny", "onnxruntime", 64, 64,
                                                                       onnx_path="x.onnx"),
             RuntimeCase("csap_tiny", "openvino-labels", 64, 64, onnx_path="x.onnx"),
             RuntimeCase("segformer_b0", "openvino", 64, 96, batch=2, onnx_path="x.onnx"),
             RuntimeCase("segnext_tiny", "openvino", 64, 192, **slide)]  # 5 windows: calls of 4 and of 1
    assert script.static_shapes(cases) == {"csap_tiny": (1, 3, 64, 64), "segformer_b0": (2, 3, 64, 96)}
    assert script.static_shapes(cases + [RuntimeCase("csap_tiny", "openvino", 64, 64, batch=2,
                                                     onnx_path="x.onnx")]) == {"segformer_b0": (2, 3, 64, 96)}
    assert script.parse_args(["--quick"]).static_onnx and not script.parse_args([]).static_onnx
    assert not script.parse_args(["--quick", "--no-static-onnx"]).static_onnx
    assert script.parse_args([]).models == list(script.DEFAULT_MODELS)
    # --quick: csap_zoo models with one block per stage; SegFormer-B0 as configured; real runs as the architectures
    assert script.parse_args(["--quick"]).depths == [1, 1, 1, 1] and script.parse_args([]).depths is None
    assert script.backbone_args("csap_tiny", [1, 1, 1, 1]) == {"depths": (1, 1, 1, 1)}
    assert script.backbone_args("segformer_b0", [1, 1, 1, 1]) is None
    assert script.backbone_args("csap_tiny", None) is None
    with pytest.raises(ValueError, match="backbone_args are for csap_zoo models"):
        RuntimeCase("segformer_b0", "torch", backbone_args={"depths": (1, 1, 1, 1)})


def test_label_map_is_resize_then_argmax():
    logits = torch.randn(2, 7, 8, 12, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False).argmax(1)
    got = torch.from_numpy(label_map(logits, (64, 96))).long()
    assert got.shape == (2, 64, 96) and (got == expected).float().mean() > 0.999  # float-rounding ties only


@pytest.mark.slow
def test_quick_runs_whole_images_and_cityscapes_slide(tmp_path):
    """The two tiny end-to-end runs (merged tests: ``test_quick_run_writes_every_contender_and_the_targets`` and
    ``test_quick_cityscapes_slide_reports_memory_per_contender``) in one child process. ``--quick``: static ONNX
    graphs of one-block-per-stage CSAP-T / SegNeXt-T, a fraction of the dynamic full-depth exports' time, which was
    the bulk of these tests."""
    r, c, q = tmp_path / "r", tmp_path / "c", tmp_path / "q"
    proc = run_script(
        ["--quick", "--threads", "1", "--onnx-dir", str(tmp_path / "onnx"), "--json", f"{r}.json", "--md", f"{r}.md",
         "--png", f"{r}.png", "--precisions", "fp32"],
        ["--quick", "--cityscapes", "--threads", "1", "--models", "csap_tiny", "--json", f"{c}.json", "--md",
         f"{c}.md", "--png", f"{c}.png", "--precisions", "fp32"],
        ["--quick", "--threads", "1", "--models", "csap_tiny", "--contenders", "csap-zoo", "openvino-labels",
         "--precisions", "bf16", "int8", "--onnx-dir", str(tmp_path / "onnx"), "--json", f"{q}.json", "--md",
         f"{q}.md", "--png", f"{q}.png"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_quick_run_writes_every_contender_and_the_targets(r)
    _check_quick_cityscapes_slide_reports_memory_per_contender(c)
    reduced = json.loads(Path(f"{q}.json").read_text())["contenders"]
    expected = [f"csap_tiny|{runtime}|{p}" for runtime in ("csap-zoo", "openvino-labels")
                for p in (("bf16", "int8") if cpu_info().bf16 else ("int8",))]
    assert [row["key"] for row in reduced] == expected and all(row["median_ms"] > 0 for row in reduced)


def _check_quick_run_writes_every_contender_and_the_targets(out):
    data = json.loads(Path(f"{out}.json").read_text())
    assert [r["key"] for r in data["contenders"]] == ALL_CONTENDERS
    # --quick: one static graph per model at the run's one network shape; csap_zoo models one block per stage
    assert data["settings"]["static_onnx"] is True and data["settings"]["depths"] == [1, 1, 1, 1]
    assert {m: (e["static_shape"], Path(e["path"]).name) for m, e in data["onnx_exports"].items()} == {
        "csap_tiny": ([1, 3, 64, 64], "csap_tiny_150c_depths1111_static_1x3x64x64.onnx"),
        "segnext_tiny": ([1, 3, 64, 64], "segnext_tiny_150c_depths1111_static_1x3x64x64.onnx"),
        "segformer_b0": ([1, 3, 64, 64], "segformer_b0_150c_static_1x3x64x64.onnx")}
    assert {"date", "machine", "versions", "settings", "gemm", "gmacs", "targets"} <= set(data)
    assert data["machine"]["cpu_model"] and data["versions"]["openvino"] and data["settings"]["threads"] == 1
    assert data["gemm"]["gmac_per_s"] > 0 and data["post_processing"]["median_ms"] > 0
    assert all(r["floor_ms"] > 0 and r["vs_fastest"] >= 1.0 for r in data["contenders"])
    csap = {r["runtime"]: r for r in data["contenders"] if r["model"] == "csap_tiny"}
    assert csap["onnxruntime"]["label_agreement"] > 0.99 and csap["openvino"]["label_agreement"] > 0.99
    assert csap["csap-zoo-torch"]["label_agreement"] > 0.99 and csap["openvino-labels"]["label_agreement"] > 0.99
    assert csap["openvino"]["setup"]["INFERENCE_NUM_THREADS"] == "1"
    assert "-> openvino" in csap["csap-zoo"]["setup"]["variant"]  # the default path runs OpenVINO here
    assert data["machine"]["cpu"]["flags"] == list(cpu_info().flags)
    evaluated = [t for t in data["targets"] if t["met"] is not None]
    assert len(evaluated) == 4 + cpu_info().bf16 and all(t["met"] in (True, False) for t in evaluated)
    md = Path(f"{out}.md").read_text()
    for runtime, model in (("csap-zoo default (Segmenter)", "CSAP-T"), ("csap-zoo (Segmenter, torch backend)", "CSAP-T"),
                           ("onnxruntime", "SegNeXt-T"), ("OpenVINO, resize + arg-max in its graph", "CSAP-T"),
                           ("OpenVINO", "SegFormer-B0"), ("torch", "SegFormer-B0")):
        assert f"| {runtime} | fp32 | {model} |" in md
    assert "## Targets" in md and md.count("(target ") == len(evaluated)
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"


def _check_quick_cityscapes_slide_reports_memory_per_contender(out):
    data = json.loads(Path(f"{out}.json").read_text())
    assert data["settings"]["mode"] == "slide" and data["post_processing"] is None
    assert data["onnx_exports"]["csap_tiny"]["static_shape"] == [3, 3, 64, 64]  # 3 windows in one network call
    assert data["settings"]["depths"] == [1, 1, 1, 1]
    rows = data["contenders"]
    assert [r["runtime"] for r in rows] == ["csap-zoo", "csap-zoo-torch", "onnxruntime", "openvino"]
    for r in rows:
        assert r["memory"]["process_peak_mb"] > 0 and r["memory"]["call_peak_mb"] >= 0
        assert r["label_agreement"] > 0.99  # the same slide merge for every runtime
    assert "not evaluated" in Path(f"{out}.md").read_text()  # no SegNeXt-T / SegFormer-B0 in this run


def test_interleaved_pause_is_not_timed():
    start = time.perf_counter()
    stats = measure_interleaved({"a": lambda: None, "b": lambda: None}, warmup=0, repeats=3, pause_s=0.02)
    assert time.perf_counter() - start >= 6 * 0.02  # one pause before each of the 6 timed calls
    assert stats["a"].runs == 3 and stats["a"].median_ms < 20  # the pause itself is outside the timing
