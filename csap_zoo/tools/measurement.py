"""Measurement primitives that know no model: wall-clock latency, timed round-robin, resident-memory peaks.

* **Latency** (:func:`measure_latency`): wall-clock of a call under ``torch.inference_mode`` with a fixed thread
  count (:func:`threads`), after ``warmup`` untimed calls; ``repeats`` timed calls give the median and the 90th
  percentile (nearest-rank, :class:`LatencyStats`).
* **Round-robin** (:func:`measure_interleaved`): several callables timed one call of each per round, so that the
  load of a shared machine drifts over all of them alike.
* **Memory** (:func:`peak_rss_mb`): RSS sampled with psutil in-process while a call runs, for quick checks (the
  allocator keeps freed pages, so a fresh process measures better: ``csap_zoo.tools.profiling.peak_memory_mb``).
* **MAC rate** (:func:`gemm_call`): an fp32 GEMM whose timing gives the machine's attainable multiply-accumulates
  per second, the yardstick of a compute floor.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["LatencyStats", "gemm_call", "measure_interleaved", "measure_latency", "peak_rss_mb", "threads"]


@dataclass
class LatencyStats:
    """Summary of timed calls, in milliseconds (p90: nearest-rank)."""

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


def gemm_call(size: int = 2048) -> Tuple[Callable[[], Any], float]:
    """An fp32 ``size`` x ``size`` x ``size`` matmul (torch, the threads in effect) and its GMACs: timed with the
    contenders, it gives the machine's attainable MAC rate, the yardstick of the compute floor."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), size ** 3 / 1e9
