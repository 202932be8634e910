"""CPU latency, memory and size benchmarks of segmentors (and of SegFormer from ``transformers`` for reference).

Conventions (benchmarks/latency.py prints them with every table):

* **Latency**: wall-clock of one forward under ``torch.inference_mode`` with a fixed thread count, after
  ``warmup`` untimed calls; ``repeats`` timed calls give the median and the 90th percentile (nearest-rank), see
  :mod:`csap_zoo.tools.measurement`. The timed call produces the model's *native* logits -- the head's stride-8
  logits for csap_zoo models (``upsample=False``), SegFormer's stride-4 logits -- so the final resize to the input
  size, which every model pays alike, is left out as in FLOP tables (``upsample=True`` includes it).
* **Memory** (:func:`peak_memory_mb`): peak resident-set growth of one forward, measured in a fresh Python process
  (peak RSS, ``VmHWM``, after the forward, minus the RSS once model and input exist): activations and
  workspace, not the weights. In-process measurements are unreliable because the allocator keeps freed pages for
  reuse (a second model measured in the same process reads near zero); ``measurement.peak_rss_mb`` samples RSS
  in-process, for quick checks. (``tracemalloc`` does not see tensor memory.)
* **ONNX Runtime**: the model exported with :func:`csap_zoo.tools.export.export_onnx` (same forward, native logits),
  run in an onnxruntime CPU session with the same thread count, timed in the same round-robin.
* **channels_last**: the model and input converted to ``torch.channels_last`` before timing.
* **optimized**: :func:`csap_zoo.models.optimize_for_inference` (folded and fused blocks, channels_last) -- what the
  ``Segmenter`` and the ``predict`` / ``eval`` commands run on the CPU. Contiguous input, as a user passes it.
* **CUDA throughput** (:func:`bench_cuda_throughput`): images/s of a batch under fp32, fp16 or bf16 autocast, in
  contiguous and channels_last layouts, timed with CUDA events after warm-up; peak allocated memory.
* Every variant of every model is timed round-robin in one loop (``measurement.measure_interleaved``), so that the
  load of a shared machine drifts over all of them alike.

One model in several runtimes (Segmenter, torch, onnxruntime, OpenVINO) is :mod:`csap_zoo.tools.runtimes`.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.logits import SegmentorLogits
from .measurement import LatencyStats, measure_interleaved

__all__ = [
    "BenchResult", "ThroughputResult", "bench_cuda_throughput", "bench_head", "bench_model", "bench_models",
    "build_bench_model", "peak_memory_mb", "segformer_b0",
]


_MEMORY_PROBE = """
import json, os, sys
import psutil, torch
from csap_zoo.tools.profiling import build_bench_model
name, height, width, classes, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
module = build_bench_model(name, classes)
x = torch.randn(1, 3, height, width)
before = psutil.Process().memory_info().rss
with torch.inference_mode():
    module(x)
# VmHWM: this process's own peak RSS (ru_maxrss would carry over the parent's peak from before exec)
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
print(json.dumps({"peak_mb": max(0, peak - before) / 2 ** 20}))
"""


def peak_memory_mb(name: str, height: int = 512, width: int = 512, num_classes: int = 150,
                   num_threads: int = 1, timeout: float = 600.0) -> float:
    """Peak resident-memory growth (MiB) of one forward of ``name`` in a fresh Python process: the process's
    peak RSS (``VmHWM``) after the forward minus its RSS once model and input exist. A fresh process is
    needed because the allocator keeps freed pages: in-process deltas after other models ran read near zero.
    Linux only (``/proc/self/status``; ``ru_maxrss`` is not used because it keeps the parent's peak across exec)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _MEMORY_PROBE, name, str(height), str(width), str(num_classes), str(num_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {name} failed: {proc.stderr.strip()[-500:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


class _SegformerLogits(nn.Module):
    """A transformers SegFormer as ``x -> logits``: its native (stride-4) logits, or resized to the input."""

    def __init__(self, model: nn.Module, upsample: bool) -> None:
        super().__init__()
        self.model = model
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x).logits
        if self.upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def segformer_b0(num_classes: int = 150) -> nn.Module:
    """SegFormer-B0 from ``transformers`` with random weights, built from its config (no download)."""
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError as err:
        raise ImportError("the SegFormer reference needs transformers: pip install 'csap-zoo[bench]'") from err
    config = SegformerConfig(num_labels=num_classes, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
                             decoder_hidden_size=256)
    return SegformerForSemanticSegmentation(config).eval()


def build_bench_model(name: str, num_classes: int = 150, upsample: bool = False, **kwargs: Any) -> nn.Module:
    """An eval-mode module ``x -> logits`` for a csap_zoo architecture name or ``segformer_b0``."""
    if name == "segformer_b0":
        return _SegformerLogits(segformer_b0(num_classes), upsample).eval()
    from ..models.registry import build_model

    return SegmentorLogits(build_model(name, num_classes=num_classes, **kwargs), upsample).eval()


@dataclass
class BenchResult:
    """One model's size, GMACs, peak memory and latency of each variant timed (see the module docstring)."""

    name: str
    height: int
    width: int
    threads: int
    params_m: float
    gmacs: Optional[float]
    latency: LatencyStats
    channels_last: Optional[LatencyStats] = None
    onnxruntime: Optional[LatencyStats] = None
    onnx_max_abs_diff: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    optimized: Optional[LatencyStats] = None

    @property
    def best(self) -> LatencyStats:
        """The fastest PyTorch variant timed (eager, channels_last or optimized), by median."""
        variants = [v for v in (self.latency, self.channels_last, self.optimized) if v is not None]
        return min(variants, key=lambda v: v.median_ms)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _gmacs(name: str, height: int, width: int, num_classes: int) -> Optional[float]:
    if name == "segformer_b0":
        return None  # fvcore cannot trace the transformers model as-is; see the table note
    from .complexity import measure_complexity

    return measure_complexity(name, height, width, num_classes).gmacs


def bench_models(
        names: Sequence[str],
        height: int = 512,
        width: int = 512,
        *,
        batch: int = 1,
        num_classes: int = 150,
        num_threads: int = 2,
        warmup: int = 3,
        repeats: int = 10,
        channels_last: bool = True,
        optimized: bool = True,
        onnx: Sequence[str] = (),
        memory: bool = True,
        gmacs: bool = True,
        upsample: bool = False,
        **model_kwargs: Any,
) -> List[BenchResult]:
    """Params, GMACs (fvcore, :mod:`csap_zoo.tools.complexity`), peak memory and latency of several models on one
    ``batch x 3 x height x width`` input. Latency variants: eager as built; ``channels_last`` (model and input
    converted); ``optimized`` (:func:`csap_zoo.models.optimize_for_inference`, csap_zoo models only: what ``Segmenter``,
    ``predict`` and ``eval`` run on the CPU); onnxruntime for the models in ``onnx``. Every variant of every model
    is timed in the same round-robin (:func:`measure_interleaved`)."""
    from ..models.fused import optimize_for_inference

    unknown_onnx = set(onnx) - set(names)
    if unknown_onnx:
        raise ValueError(f"--onnx names models that are not benchmarked: {sorted(unknown_onnx)}")
    if "segformer_b0" in onnx:
        raise ValueError("ONNX timing is offered for csap_zoo models only")
    x = torch.randn(batch, 3, height, width)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    results: List[BenchResult] = []
    calls: Dict[str, Callable[[], Any]] = {}
    for name in names:
        torch.manual_seed(0)
        module = build_bench_model(name, num_classes, upsample, **model_kwargs)
        params = sum(p.numel() for p in module.parameters()) / 1e6
        peak_mem = (peak_memory_mb(name, height, width, num_classes, num_threads)
                    if memory and not model_kwargs and not upsample and batch == 1 else None)
        result = BenchResult(name, height, width, num_threads, params,
                             _gmacs(name, height, width, num_classes) if gmacs else None,
                             LatencyStats(0.0, 0.0, 0.0, 0.0, 0), peak_mem_mb=peak_mem)
        results.append(result)
        if name in onnx:
            run_session, result.onnx_max_abs_diff = _onnx_runner(module, x, num_threads, upsample)
            calls[f"{name}|onnxruntime"] = run_session
        calls[f"{name}|eager"] = lambda module=module: module(x)
        if channels_last:
            module_cl = copy.deepcopy(module).to(memory_format=torch.channels_last)
            calls[f"{name}|channels_last"] = lambda module_cl=module_cl: module_cl(x_cl)
        if optimized and isinstance(module, SegmentorLogits):
            fast = SegmentorLogits(optimize_for_inference(module.model), upsample).eval()
            calls[f"{name}|optimized"] = lambda fast=fast: fast(x)
    stats = measure_interleaved(calls, warmup, repeats, num_threads)
    for result in results:
        result.latency = stats[f"{result.name}|eager"]
        result.channels_last = stats.get(f"{result.name}|channels_last")
        result.optimized = stats.get(f"{result.name}|optimized")
        result.onnxruntime = stats.get(f"{result.name}|onnxruntime")
    return results


def bench_model(
        name: str,
        height: int = 512,
        width: int = 512,
        *,
        batch: int = 1,
        num_classes: int = 150,
        num_threads: int = 2,
        warmup: int = 3,
        repeats: int = 10,
        channels_last: bool = True,
        onnx: bool = False,
        memory: bool = True,
        gmacs: bool = True,
        upsample: bool = False,
        optimized: bool = True,
        **model_kwargs: Any,
) -> BenchResult:
    """:func:`bench_models` for one model (``onnx``: also time it in onnxruntime)."""
    return bench_models([name], height, width, batch=batch, num_classes=num_classes, num_threads=num_threads,
                        warmup=warmup, repeats=repeats, channels_last=channels_last, optimized=optimized,
                        onnx=[name] if onnx else [], memory=memory, gmacs=gmacs, upsample=upsample,
                        **model_kwargs)[0]


def _onnx_runner(module: SegmentorLogits, x: torch.Tensor, num_threads: int,
                 upsample: bool) -> Tuple[Callable[[], Any], float]:
    """An onnxruntime session of the exported model as a callable on ``x``, and its max abs difference to eager.
    The session's file is read into memory, so the temporary export can go."""
    from .export import export_onnx, onnx_session

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(module.model, path, x.shape[-2], x.shape[-1], upsample=upsample, check=False)
        session = onnx_session(path, threads=num_threads)
    feed = {"image": x.numpy()}
    with torch.inference_mode():
        expected = module(x)
    diff = float((torch.from_numpy(session.run(None, feed)[0]) - expected).abs().max())
    return (lambda: session.run(None, feed)), diff


def bench_head(
        backbone_model: str = "csap_tiny",
        heads: Sequence[str] = ("csap_tiny", "segnext_tiny"),
        height: int = 512,
        width: int = 512,
        num_classes: int = 150,
        num_threads: int = 2,
        warmup: int = 3,
        repeats: int = 10,
) -> List[BenchResult]:
    """Decoder-only latency: each architecture's head on the same backbone features (computed once), timed
    round-robin: as built on contiguous features (``latency``) and as in an optimized model (``optimized``:
    channels_last features and weights, stages projected before their resize)."""
    from ..models.fused import reparameterize_modules
    from ..models.registry import build_model

    torch.manual_seed(0)
    with torch.inference_mode():
        source = build_model(backbone_model, num_classes=num_classes).eval()
        features = source.forward_features(source.prepare_input(torch.randn(1, 3, height, width)))
    features_cl = [f.contiguous(memory_format=torch.channels_last) for f in features]
    calls: Dict[str, Callable[[], Any]] = {}
    results = []
    for name in heads:
        model = build_model(name, num_classes=num_classes).eval()
        head = model.decode_head
        got = [f.shape[1] for f in features]
        if list(getattr(head, "in_channels", got)) != got:
            raise ValueError(f"{name}'s head expects {head.in_channels} channels, the {backbone_model} features "
                             f"have {got}")
        # prepared as optimize_for_inference prepares it (reparameterize(): projected before resize, norms folded)
        fast_head = reparameterize_modules(copy.deepcopy(head)).to(memory_format=torch.channels_last)
        calls[f"{name}|eager"] = lambda head=head: head(features)
        calls[f"{name}|optimized"] = lambda fast_head=fast_head: fast_head(features_cl)
        params = sum(p.numel() for p in head.parameters()) / 1e6
        results.append(BenchResult(f"{name} head", height, width, num_threads, params, None,
                                   LatencyStats(0.0, 0.0, 0.0, 0.0, 0)))
    stats = measure_interleaved(calls, warmup, repeats, num_threads)
    for name, result in zip(heads, results):
        result.latency = stats[f"{name}|eager"]
        result.optimized = stats[f"{name}|optimized"]
    return results


@dataclass
class ThroughputResult:
    """GPU throughput of one model in one layout and autocast dtype."""

    name: str
    batch: int
    height: int
    width: int
    dtype: str
    channels_last: bool
    median_ms: float
    images_per_s: float
    peak_mem_mb: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def bench_cuda_throughput(
        name: str,
        batch: int = 8,
        height: int = 512,
        width: int = 512,
        num_classes: int = 150,
        dtypes: Sequence[str] = ("fp32", "fp16", "bf16"),
        layouts: Sequence[bool] = (False, True),
        warmup: int = 5,
        repeats: int = 20,
        device: str = "cuda",
) -> List[ThroughputResult]:
    """GPU throughput of one model: for each layout (``layouts``: channels_last off / on) and autocast dtype, the
    median time of a ``batch`` forward (CUDA events), images per second and peak allocated memory."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA throughput needs a CUDA device and a CUDA build of torch; none is available here "
                           "(the CPU latency benchmark needs neither)")
    unknown = [d for d in dtypes if d not in _AUTOCAST_DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; choose from {sorted(_AUTOCAST_DTYPES)}")
    torch.manual_seed(0)
    module = build_bench_model(name, num_classes).to(device)
    results = []
    for use_cl in layouts:
        memory_format = torch.channels_last if use_cl else torch.contiguous_format
        module = module.to(memory_format=memory_format)
        x = torch.randn(batch, 3, height, width, device=device).contiguous(memory_format=memory_format)
        for dtype_name in dtypes:
            dtype = _AUTOCAST_DTYPES[dtype_name]
            times = []
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float16,
                                                        enabled=dtype is not None):
                for _ in range(warmup):
                    module(x)
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                for _ in range(repeats):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    module(x)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            median = statistics.median(times)
            results.append(ThroughputResult(name, batch, height, width, dtype_name, use_cl, median,
                                            batch * 1000.0 / median,
                                            torch.cuda.max_memory_allocated(device) / 2 ** 20))
    return results

