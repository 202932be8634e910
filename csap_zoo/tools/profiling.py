"""CPU latency, memory and size benchmarks of segmentors (and of SegFormer from ``transformers`` for reference).

Conventions (benchmarks/latency.py prints them with every table):

* **Latency**: wall-clock of one forward under ``torch.inference_mode`` with a fixed thread count, after
  ``warmup`` untimed calls; ``repeats`` timed calls give the median and the 90th percentile (nearest-rank).
  The timed call produces the model's *native* logits -- the head's stride-8 logits for csap_zoo models
  (``upsample=False``), SegFormer's stride-4 logits -- so the final resize to the input size, which every model
  pays alike, is left out as in FLOP tables (``upsample=True`` includes it).
* **Memory** (:func:`peak_memory_mb`): peak resident-set growth of one forward, measured in a fresh Python process
  (peak RSS, ``VmHWM``, after the forward, minus the RSS once model and input exist): activations and
  workspace, not the weights. In-process measurements are unreliable because the allocator keeps freed pages for
  reuse (a second model measured in the same process reads near zero). :func:`peak_rss_mb` samples RSS with
  psutil in-process, for quick checks. (``tracemalloc`` does not see tensor memory.)
* **ONNX Runtime**: the model exported with :func:`csap_zoo.tools.export.export_onnx` (same forward, native logits),
  run in an onnxruntime CPU session with the same thread count, timed in the same round-robin.
* **channels_last**: the model and input converted to ``torch.channels_last`` before timing.
* **optimized**: :func:`csap_zoo.optimize_for_inference` (folded and fused blocks, channels_last) -- what the
  ``Segmenter`` and the ``predict`` / ``eval`` commands run on the CPU. Contiguous input, as a user passes it.
* **CUDA throughput** (:func:`bench_cuda_throughput`): images/s of a batch under fp32, fp16 or bf16 autocast, in
  contiguous and channels_last layouts, timed with CUDA events after warm-up; peak allocated memory.
* Every variant of every model is timed round-robin in one loop (:func:`measure_interleaved`), so that the
  load of a shared machine drifts over all of them alike.
* **Runtimes side by side** (benchmarks/runtimes.py, :class:`RuntimeCase`, :func:`build_runtime_call`): a model in
  csap-zoo's ``Segmenter``, torch, onnxruntime or OpenVINO, timed from a uint8 image to its label map with the same
  normalisation and post-processing (:func:`label_map`) for all; memory per contender in a fresh process
  (:func:`runtime_peak_memory`); an fp32 GEMM (:func:`gemm_call`) gives the MAC rate behind the compute floor.
"""
from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backends import OPENVINO_CPU_CONFIG

__all__ = [
    "BenchResult", "LatencyStats", "RUNTIMES", "RuntimeCall", "RuntimeCase", "ThroughputResult",
    "bench_cuda_throughput", "bench_head", "bench_model", "bench_models", "build_bench_model", "build_runtime_call",
    "export_runtime_onnx", "flop_counter_gmacs", "gemm_call", "label_map", "measure_interleaved", "measure_latency",
    "openvino_model", "ort_session", "peak_memory_mb", "peak_rss_mb", "runtime_gmacs", "runtime_peak_memory",
    "segformer_b0", "threads",
]


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_times(cls, seconds: Sequence[float]) -> "LatencyStats":
        if not seconds:
            raise ValueError("no timings")
        ms = sorted(s * 1000.0 for s in seconds)
        rank = max(1, math.ceil(0.9 * len(ms)))  # nearest-rank percentile
        return cls(statistics.median(ms), ms[rank - 1], statistics.fmean(ms), ms[0], len(ms))


@contextmanager
def threads(count: Optional[int]) -> Iterator[None]:
    """Run torch with ``count`` intra-op threads inside the block (None: leave as is)."""
    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10,
                    num_threads: Optional[int] = None) -> LatencyStats:
    """Median / p90 wall-clock of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    return measure_interleaved({"fn": fn}, warmup, repeats, num_threads)["fn"]


def peak_rss_mb(fn: Callable[[], Any], runs: int = 2, interval: float = 0.001,
                num_threads: Optional[int] = None) -> float:
    """Peak growth of the process's resident memory (MiB) while ``fn()`` runs, see the module docstring."""
    try:
        import psutil
    except ImportError as err:
        raise ImportError("memory measurement needs psutil: pip install 'csap-zoo[bench]'") from err
    process = psutil.Process(os.getpid())
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with threads(num_threads), torch.inference_mode():
            for _ in range(runs):
                fn()
                peak = max(peak, process.memory_info().rss)
    finally:
        stop.set()
        sampler.join()
    return max(0.0, (peak - baseline) / 2 ** 20)


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


# ----------------------------------------------------------------------------------------------- models
class _NativeLogits(nn.Module):
    """Calls a csap_zoo segmentor for its native (stride-8) or full-size logits."""

    def __init__(self, model: nn.Module, upsample: bool) -> None:
        super().__init__()
        self.model = model
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, upsample=self.upsample)


class _SegformerLogits(_NativeLogits):
    """Calls a transformers SegFormer for its native (stride-4) or full-size logits."""

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

    return _NativeLogits(build_model(name, num_classes=num_classes, **kwargs), upsample).eval()


@dataclass
class BenchResult:
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


def measure_interleaved(calls: Dict[str, Callable[[], Any]], warmup: int = 3, repeats: int = 10,
                        num_threads: Optional[int] = None, pause_s: float = 0.0) -> Dict[str, LatencyStats]:
    """Like :func:`measure_latency` for several callables, timed round-robin (one call of each per round), so
    that a slow spell of a shared machine hits every variant alike instead of whichever ran during it. Each round
    starts one place further along the list: the first call of a round follows the previous round's last one,
    whose freed memory the allocator may have returned to the OS, and that page-fault cost moves around rather
    than always landing on the same variant. ``pause_s`` sleeps (untimed) before each timed call, so that the
    worker threads of the previous callable's runtime (OpenMP, TBB) stop spinning before the next one starts."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    keys = list(calls)
    times: Dict[str, List[float]] = {key: [] for key in keys}
    with threads(num_threads), torch.inference_mode():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        for round_index in range(repeats):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                fn = calls[key]
                if pause_s:
                    time.sleep(pause_s)
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    return {key: LatencyStats.from_times(values) for key, values in times.items()}


def bench_models(
        names: Sequence[str],
        height: int = 512,
        width: int = 512,
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
    converted); ``optimized`` (:func:`csap_zoo.optimize_for_inference`, csap_zoo models only: what ``Segmenter``,
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
        if optimized and isinstance(module, _NativeLogits):
            fast = _NativeLogits(optimize_for_inference(module.model), upsample).eval()
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
    return bench_models([name], height, width, batch, num_classes, num_threads, warmup, repeats, channels_last,
                        optimized, [name] if onnx else [], memory, gmacs, upsample, **model_kwargs)[0]


def _onnx_runner(module: _NativeLogits, x: torch.Tensor, num_threads: int,
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


# ----------------------------------------------------------------------------------------------- runtimes
# benchmarks/runtimes.py: one model in several runtimes, each timed from a uint8 image to its label map.
RUNTIMES = ("csap-zoo", "csap-zoo-openvino", "torch", "onnxruntime", "openvino", "openvino-labels")
_SEGMENTER_RUNTIMES = ("csap-zoo", "csap-zoo-openvino")
_EXPORT_MULTIPLE = 32  # exported graphs return the cropped stride-8 cells: sizes must not need padding


def _hw(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass
class RuntimeCase:
    """One contender of the runtime comparison: ``model`` (a csap_zoo name or ``segformer_b0``) run by ``runtime``
    on a ``batch`` of uint8 ``height`` x ``width`` images, whole or in ``crop`` windows every ``stride`` pixels
    (``mode="slide"``, ``slide_batch`` windows per call), from the image to its label map; see
    :func:`build_runtime_call`. Plain data, so that a fresh process can rebuild it (:func:`runtime_peak_memory`).

    Runtimes: ``csap-zoo`` (``Segmenter``: what ``Segmenter(model)`` runs on the CPU), ``csap-zoo-openvino``
    (``Segmenter(model, backend="openvino")``: the same pre- and post-processing, the network in OpenVINO),
    ``torch`` (the PyTorch module on the whole batch: csap_zoo models through ``optimize_for_inference``,
    SegFormer as ``transformers`` builds it), ``onnxruntime`` and ``openvino`` (the ONNX file ``onnx_path``, native
    logits), ``openvino-labels`` (that file in OpenVINO with the resize and the arg-max appended to its graph, as
    ``Segmenter``'s OpenVINO backend builds them; whole images, batch 1). ``backbone_args`` go to the csap_zoo
    model's backbone (e.g. ``{"depths": (1, 1, 1, 1)}``: smaller networks for a smoke run)."""

    model: str
    runtime: str
    height: int = 512
    width: int = 512
    batch: int = 1
    num_classes: int = 150
    threads: int = 2
    mode: str = "whole"
    crop: Tuple[int, int] = (1024, 1024)
    stride: Tuple[int, int] = (768, 768)
    slide_batch: int = 4
    onnx_path: Optional[str] = None
    backbone_args: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        self.crop, self.stride = _hw(self.crop), _hw(self.stride)
        if self.backbone_args and self.model == "segformer_b0":
            raise ValueError("backbone_args are for csap_zoo models, not segformer_b0")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose from {RUNTIMES}")
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.runtime in _SEGMENTER_RUNTIMES and self.model == "segformer_b0":
            raise ValueError(f"the {self.runtime} runtime (Segmenter) runs csap_zoo models only")
        if self.runtime == "openvino-labels" and (self.mode != "whole" or self.batch != 1):
            raise ValueError("the openvino-labels contender runs whole images one at a time (batch 1)")
        if self.runtime in ("onnxruntime", "openvino", "openvino-labels"):
            if self.onnx_path is None:
                raise ValueError(f"the {self.runtime} contender needs onnx_path")
            h, w = self.window()
            if h % _EXPORT_MULTIPLE or w % _EXPORT_MULTIPLE:
                raise ValueError(f"{self.runtime} contenders need network inputs divisible by {_EXPORT_MULTIPLE} "
                                 f"(the exported graph returns the cropped logit cells), got {h}x{w}")

    @property
    def key(self) -> str:
        return f"{self.model}|{self.runtime}"

    def window(self) -> Tuple[int, int]:
        """The size of one network input: the image (whole), or a window (shrunk to the image when larger)."""
        if self.mode == "whole":
            return self.height, self.width
        return min(self.crop[0], self.height), min(self.crop[1], self.width)

    def windows(self) -> int:
        """Network inputs of one image's size ``window()`` per image: 1 whole, the slide windows otherwise (the
        rule of ``Segmenter``'s slide mode: the last window of a row / column moved back to the image edge)."""
        if self.mode == "whole":
            return 1
        rows = max(self.height - self.crop[0] + self.stride[0] - 1, 0) // self.stride[0] + 1
        cols = max(self.width - self.crop[1] + self.stride[1] - 1, 0) // self.stride[1] + 1
        return rows * cols

    def network_shapes(self) -> List[Tuple[int, int, int, int]]:
        """The distinct input shapes the network sees (a single one lets the runtimes compile for it)."""
        h, w = self.window()
        if self.mode == "whole":
            return [(1 if self.runtime in _SEGMENTER_RUNTIMES else self.batch, 3, h, w)]
        n = self.windows()
        sizes = {self.slide_batch} if n >= self.slide_batch else set()
        if n % self.slide_batch:
            sizes.add(n % self.slide_batch)
        return [(size, 3, h, w) for size in sorted(sizes)]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class RuntimeCall:
    """A prepared contender: ``fn()`` maps the case's image batch to label maps; ``info`` says how it was set up
    (the runtime's settings as it reports them)."""

    case: RuntimeCase
    fn: Callable[[], Any]
    info: Dict[str, Any]

    def labels(self) -> Any:
        """One call's label maps as a (B, H, W) numpy array (outside timing: for agreement checks)."""
        import numpy as np

        out = self.fn()
        if isinstance(out, list):
            return np.stack(out)
        return out[None] if out.ndim == 2 else out


def label_map(low: torch.Tensor, out_size: Tuple[int, int],
              geometry: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None) -> Any:
    """Label maps (B, H, W) of native logits ``low`` (B, K, h, w): bilinearly resized to ``geometry[0]`` (default
    ``out_size``) and cropped to ``geometry[1]``, band of rows by band, then arg-maxed -- what ``Segmenter`` runs
    on a Segmentor's stride-8 logits without its label-map shortcut (:func:`csap_zoo.labelmap.resize_rows`, then the
    arg-max): the post-processing a runtime's user writes, the same for every runtime contender."""
    import numpy as np

    from ..labelmap import resize_rows

    resized, covered = geometry or (out_size, out_size)
    dtype = torch.uint8 if low.shape[1] <= 256 else torch.int32
    out = None
    y = 0
    for band in resize_rows([low], tuple(low.shape[-2:]), resized, keep=covered):
        part = band.max(dim=1).indices.to(dtype).numpy()
        if out is None:
            out = np.empty((low.shape[0],) + tuple(covered), dtype=part.dtype)
        out[:, y:y + part.shape[1]] = part
        y += part.shape[1]
    return out


class _WindowLogits(nn.Module):
    """Native logits from a runtime, resized to the input window (and cropped): what a Segmentor's ``forward``
    returns, so that ``Segmenter``'s slide mode can merge any runtime's windows."""

    def __init__(self, native: Callable[[torch.Tensor], torch.Tensor],
                 geometry: Callable[[int, int], Tuple[Tuple[int, int], Tuple[int, int]]]) -> None:
        super().__init__()
        self.native = native
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resized, (keep_h, keep_w) = self.geometry(x.shape[-2], x.shape[-1])
        logits = F.interpolate(self.native(x), size=resized, mode="bilinear", align_corners=False)
        return logits[:, :, :keep_h, :keep_w]


def _seeded_model(case: RuntimeCase) -> nn.Module:
    """The case's eval-mode PyTorch model with seed-0 random weights (the ONNX exports use the same seed)."""
    torch.manual_seed(0)
    if case.model == "segformer_b0":
        return segformer_b0(case.num_classes)
    from ..models.registry import build_model

    return build_model(case.model, num_classes=case.num_classes, backbone_args=case.backbone_args).eval()


def _same_size(h: int, w: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    return (h, w), (h, w)


def ort_session(path: str, threads: int, shape: Optional[Sequence[int]] = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op thread and no spinning (idle
    workers sleep instead of holding cores that the next contender of a round-robin needs); ``shape`` fixes
    the input's symbolic dimensions so that the session can plan for it."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the onnxruntime contender needs onnxruntime: pip install 'csap-zoo[export]'") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if shape is not None:
        import onnx

        dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, shape):
            if dim.dim_param:
                options.add_free_dimension_override_by_name(dim.dim_param, int(value))
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


OPENVINO_CONFIG = OPENVINO_CPU_CONFIG  # the same compilation as Segmenter's OpenVINO backend


def openvino_model(path: str, threads: int, shape: Optional[Sequence[int]] = None):
    """The ONNX file compiled by OpenVINO for the CPU: latency hint (one stream), f32 precision (no bf16 / fp16
    down-casting on CPUs that have it), ``threads`` inference threads; ``shape`` reshapes the input to it first
    (static shapes are what OpenVINO's CPU plugin plans best for)."""
    try:
        import openvino as ov
    except ImportError as err:
        raise ImportError("the openvino contender needs openvino: pip install openvino") from err
    core = ov.Core()
    model = core.read_model(path)
    if shape is not None:
        model.reshape(list(shape))
    return core.compile_model(model, "CPU", {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": threads})


def _native_runner(case: RuntimeCase) -> Tuple[Callable[[torch.Tensor], torch.Tensor],
                                                Callable[[int, int], Any], Dict[str, Any]]:
    """For every runtime but csap-zoo: normalised float batch -> native logits, the logits' geometry, and info."""
    shapes = case.network_shapes()
    shape = shapes[0] if len(shapes) == 1 else None
    if case.runtime == "torch":
        model = _seeded_model(case)
        if case.model == "segformer_b0":
            return (lambda x: model(pixel_values=x).logits), _same_size, {"variant": "transformers eager"}
        from ..models.fused import optimize_for_inference

        fast = optimize_for_inference(model)
        return ((lambda x: fast(x, upsample=False, crop=False)), fast.logit_geometry,
                {"variant": "optimize_for_inference"})
    path = str(case.onnx_path)
    if case.runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort_session(path, case.threads, shape)
        name = session.get_inputs()[0].name
        info = {"onnxruntime": ort.__version__, "intra_op_num_threads": case.threads, "inter_op_num_threads": 1,
                "allow_spinning": "0", "static_shape": list(shape) if shape else None}
        return (lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])), _same_size, info
    compiled = openvino_model(path, case.threads, shape)
    request = compiled.create_infer_request()
    info = {}
    for key in ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                "ENABLE_CPU_PINNING"):
        value = compiled.get_property(key)  # as the compiled model reports it
        info[key] = value.to_string() if hasattr(value, "to_string") else str(value)
    info["static_shape"] = list(shape) if shape else None

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data)  # valid until the next infer: used at once

    return run, _same_size, info


def build_runtime_call(case: RuntimeCase) -> RuntimeCall:
    """The contender's ``image -> label map`` callable on a fixed random uint8 batch (the same for every case of
    that size). What each call includes, alike for all runtimes: normalisation (ImageNet mean / std), the
    network, the bilinear resize of its logits to the image (or window) size and the arg-max, band of rows by
    band (:func:`label_map`, the code ``Segmenter`` runs); slide mode merges windows with ``Segmenter``'s own slide
    code for every runtime. The csap-zoo contender is ``Segmenter(model, resize=None).predict`` (one image at a
    time, as ``predict`` runs a batch)."""
    from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
    from ..inference import Segmenter

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (case.batch, 3, case.height, case.width), generator=gen, dtype=torch.uint8)
    one = image[0] if case.batch == 1 else image
    slide = dict(mode="slide", crop_size=case.crop, stride=case.stride, slide_batch_size=case.slide_batch)
    if case.runtime == "csap-zoo":
        seg = Segmenter(_seeded_model(case), resize=None, **(slide if case.mode == "slide" else {}))
        return RuntimeCall(case, lambda: seg.predict(one), {"variant": "Segmenter (optimize_for_inference)"})
    if case.runtime == "csap-zoo-openvino":
        seg = Segmenter(_seeded_model(case), resize=None, backend="openvino", backend_cache_dir=False,
                        **(slide if case.mode == "slide" else {}))
        seg.predict(one)  # setup: convert and compile every input shape (what a cached conversion saves later)
        return RuntimeCall(case, lambda: seg.predict(one), {"variant": "Segmenter(backend='openvino')",
                                                             "threads": seg.network.threads})
    mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)

    def normalized() -> torch.Tensor:
        return (image.float() - mean) / std

    if case.runtime == "openvino-labels":
        return _openvino_labels_call(case, normalized)
    native, geometry, info = _native_runner(case)
    if case.mode == "slide":
        seg = Segmenter(_WindowLogits(native, geometry), resize=None, optimize=False, mean=IMAGENET_MEAN_255,
                        std=IMAGENET_STD_255, **slide)
        return RuntimeCall(case, lambda: seg.predict(one), info)
    size = (case.height, case.width)

    def call() -> Any:
        return label_map(native(normalized()), size, geometry(*size))

    return RuntimeCall(case, call, info)


def _openvino_labels_call(case: RuntimeCase, normalized: Callable[[], torch.Tensor]) -> RuntimeCall:
    """The ONNX file in OpenVINO with the bilinear resize of its logits to the image (what :func:`label_map` does
    for the ``openvino`` contender) and the arg-max appended to the graph (``csap_zoo.backends.label_map_graph``),
    so that one OpenVINO call maps the ``normalized()`` image to its labels."""
    import openvino as ov

    from ..backends import label_map_graph
    from ..labelmap import ResizeStep

    shape = case.network_shapes()[0]
    core = ov.Core()
    network = core.read_model(str(case.onnx_path))
    network.reshape(list(shape))
    low = tuple(int(d) for d in network.output(0).get_shape())
    resized, covered = _same_size(case.height, case.width)
    graph = label_map_graph(ov, network, [ResizeStep(low[-2:], resized, covered)], low[1])
    compiled = core.compile_model(graph, "CPU", {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": case.threads})
    request = compiled.create_infer_request()

    def call() -> Any:
        request.infer({0: normalized().numpy()}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return RuntimeCall(case, call, {"variant": "resize + arg-max in the OpenVINO graph", "static_shape": list(shape)})


def export_runtime_onnx(name: str, path: str, num_classes: int = 150, height: int = 512, width: int = 512,
                        batch: Optional[int] = None, backbone_args: Optional[Dict[str, Any]] = None) -> str:
    """Export the seed-0 model ``name`` to ONNX for the runtime contenders: input ``image`` (B, 3, H, W) with
    dynamic batch, height and width, output its native logits (csap_zoo models through
    :func:`csap_zoo.tools.export.export_onnx` with ``upsample=False``; SegFormer-B0 with ``torch.onnx.export``).
    With ``batch``, a static graph for ``batch`` x 3 x ``height`` x ``width`` inputs only instead (a fraction of the
    dynamic export's time). ``backbone_args``: as in :class:`RuntimeCase`."""
    import warnings

    from .export import export_onnx

    model = _seeded_model(RuntimeCase(name, "torch", num_classes=num_classes, backbone_args=backbone_args))
    if name != "segformer_b0":
        export_onnx(model, path, height, width, batch=batch or 1, dynamic=batch is None, upsample=False, check=False)
        return path
    from ..fileio import atomic_write

    dim = torch.export.Dim.DYNAMIC
    example = torch.randn(batch or 2, 3, height, width)  # dynamic: batch 2, a batch of 1 would be specialised
    dynamic_shapes = None if batch else {"x": {0: dim, 2: dim, 3: dim}}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_SegformerLogits(model, False).eval(), (example,), None, dynamo=True,
                                        opset_version=18, input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=dynamic_shapes, verbose=False)
        program.save(tmp)

    atomic_write(path, write, suffix=".onnx")
    return path


def flop_counter_gmacs(module: nn.Module, x: torch.Tensor) -> float:
    """GMACs of ``module(x)`` by ``torch.utils.flop_counter`` (matmuls, convolutions and attention; it counts two
    FLOPs per multiply-accumulate). It traces what fvcore cannot (transformers' SegFormer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2e9


def runtime_gmacs(name: str, height: int, width: int, num_classes: int = 150,
                  backbone_args: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """GMACs of one ``height`` x ``width`` image up to the native logits: ``gmacs`` by fvcore for csap_zoo models
    (:func:`csap_zoo.tools.complexity.measure_complexity`, the papers' convention) and by the flop counter for
    SegFormer-B0; ``flop_counter`` by the flop counter for all (a cross-check). ``backbone_args``: as in
    :class:`RuntimeCase`."""
    torch.manual_seed(0)
    extra = {"backbone_args": backbone_args} if backbone_args else {}
    module = build_bench_model(name, num_classes, **extra)
    x = torch.randn(1, 3, height, width)
    counted = flop_counter_gmacs(module, x)
    if name == "segformer_b0":
        return {"gmacs": counted, "counter": "torch.utils.flop_counter", "flop_counter": counted}
    from .complexity import measure_complexity

    return {"gmacs": measure_complexity(name, height, width, num_classes, **extra).gmacs, "counter": "fvcore",
            "flop_counter": counted}


def gemm_call(size: int = 2048) -> Tuple[Callable[[], Any], float]:
    """An fp32 ``size`` x ``size`` x ``size`` matmul (torch, the threads in effect) and its GMACs: timed with the
    contenders, it gives the machine's attainable MAC rate, the yardstick of the compute floor."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), size ** 3 / 1e9


_RUNTIME_MEMORY_PROBE = """
import json, sys
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024
case = json.loads(sys.argv[1])
import torch
torch.set_num_threads(case["threads"])
from csap_zoo.tools import profiling
profiling._preload(case["runtime"], case["model"])
base = status("VmRSS")
call = profiling.build_runtime_call(profiling.RuntimeCase(**case))
setup_peak = status("VmHWM")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
with torch.inference_mode():
    call.fn()
peak = status("VmHWM")
mib = 2 ** 20
print(json.dumps({"call_peak_mb": max(0, peak - before) / mib, "process_peak_mb": (max(peak, setup_peak) - base) / mib,
                  "setup_mb": (before - base) / mib, "hwm_reset": reset}))
"""


def _preload(runtime: str, model: str) -> None:
    """Import what a contender needs, so that the memory probe's baseline holds the libraries' code."""
    import csap_zoo.inference  # noqa: F401

    if runtime == "onnxruntime":
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    elif runtime in ("openvino", "openvino-labels"):
        import openvino  # noqa: F401
    elif model == "segformer_b0":
        import transformers  # noqa: F401


def runtime_peak_memory(case: RuntimeCase, timeout: float = 900.0) -> Dict[str, Any]:
    """Memory of one contender, measured in a fresh Python process (in-process numbers are unreliable: the
    allocators of torch, onnxruntime and OpenVINO keep freed memory for reuse). The process imports the libraries,
    builds the contender (RSS ``setup_mb`` above the imports: weights, compiled graph, session), resets its peak
    RSS (``/proc/self/clear_refs``) and runs one call, its first: ``call_peak_mb`` is the peak RSS growth during
    it (activations, workspace, the runtime's arenas), ``process_peak_mb`` the process's peak RSS above the
    imports over setup and call. Linux only."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _RUNTIME_MEMORY_PROBE, json.dumps(case.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {case.key} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
