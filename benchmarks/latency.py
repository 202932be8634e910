"""CPU latency of CSAP T/S/B/L, SegNeXt T/S/B/L and SegFormer-B0 (transformers, random weights), in one run.

Per model: params, GMACs (fvcore), eager latency (median / p90), channels_last latency, peak memory, and for the
models in --onnx onnxruntime latency; ratios against CSAP-T. Then a decoder-only comparison: the CSAP head and the
Ham (SegNeXt) head on the same MSCAN-T features. See ``csap_zoo.tools.profiling`` for how each number is taken.

    python benchmarks/latency.py                                 # 1x3x512x512, 2 threads, all models
    python benchmarks/latency.py --models csap_tiny segnext_tiny --repeats 20 --json out.json --png out.png
    python benchmarks/latency.py --threads 4 --onnx csap_tiny segnext_tiny

CPU timings depend on the machine and on its load: run on an idle machine and report both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from csap_zoo.fileio import atomic_write
from csap_zoo.tools.profiling import (
    BenchResult, ThroughputResult, bench_cuda_throughput, bench_head, bench_models,
)

DEFAULT_MODELS = ("csap_tiny", "csap_small", "csap_base", "csap_large", "segnext_tiny", "segnext_small",
                  "segnext_base", "segnext_large", "segformer_b0")
REFERENCE = "csap_tiny"


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: List[BenchResult], reference: str = REFERENCE) -> str:
    """Markdown table of whole-model results; ratios are median latencies over CSAP-T's, as built (eager) and
    optimized (for models without an optimized variant, their best of eager / channels_last)."""
    ref = next((r for r in results if r.name == reference), None)
    lines = [
        "| model | params (M) | GMACs | eager ms (median / p90) | channels_last ms | optimized ms | onnxruntime ms "
        f"| peak mem (MiB) | eager vs {reference} | optimized vs {reference} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = best_ratio = ""
        if ref is not None:
            ratio = f"{r.latency.median_ms / ref.latency.median_ms:.2f}x"
            best_ratio = f"{_fast(r).median_ms / _fast(ref).median_ms:.2f}x"
        lines.append(
            f"| {r.name} | {r.params_m:.2f} | {_fmt(r.gmacs, 2)} | {r.latency.median_ms:.1f} / {r.latency.p90_ms:.1f} "
            f"| {_fmt(r.channels_last and r.channels_last.median_ms)} | {_fmt(r.optimized and r.optimized.median_ms)} "
            f"| {_fmt(r.onnxruntime and r.onnxruntime.median_ms)} | {_fmt(r.peak_mem_mb, 0)} | {ratio} | {best_ratio} |"
        )
    return "\n".join(lines)


def _fast(result: BenchResult):
    """A model's deployed PyTorch latency: its optimized variant, or its best variant when it has none."""
    return result.optimized or result.best


def format_head_table(results: List[BenchResult]) -> str:
    ref = results[0] if results else None
    lines = ["| decoder (same MSCAN-T features) | params (M) | eager ms (median / p90) | optimized ms | eager vs first "
             "| optimized vs first |", "|---|---|---|---|---|---|"]
    for r in results:
        opt_ratio = (f"{r.optimized.median_ms / ref.optimized.median_ms:.2f}x"
                     if r.optimized and ref.optimized else "")
        lines.append(f"| {r.name} | {r.params_m:.2f} | {r.latency.median_ms:.1f} / {r.latency.p90_ms:.1f} "
                     f"| {_fmt(r.optimized and r.optimized.median_ms)} "
                     f"| {r.latency.median_ms / ref.latency.median_ms:.2f}x | {opt_ratio} |")
    return "\n".join(lines)


def targets(results: List[BenchResult], heads: List[BenchResult]) -> List[str]:
    """The issue's latency targets, each with its measured ratio and whether it is met: once for the models as
    built (eager) and once optimized (CSAP-T and SegNeXt-T through optimize_for_inference; SegFormer-B0, which has
    no such path, at its best of eager and channels_last)."""
    by = {r.name: r for r in results}
    lines = []

    def check(label: str, num: Optional[float], den: Optional[float], limit: float, larger: bool = False) -> None:
        if num is None or den is None:
            return
        ratio = num / den
        ok = ratio >= limit if larger else ratio <= limit
        lines.append(f"- {label}: {ratio:.2f}x (target {'>=' if larger else '<='} {limit}x) "
                     f"{'met' if ok else 'NOT met'}")

    csap = by.get("csap_tiny")
    if csap:
        for peer, limit in (("segnext_tiny", 0.80), ("segformer_b0", 0.60)):
            if peer in by:
                check(f"CSAP-T / {peer} latency, eager", csap.latency.median_ms, by[peer].latency.median_ms, limit)
                if csap.optimized:
                    check(f"CSAP-T / {peer} latency, optimized", csap.optimized.median_ms,
                          _fast(by[peer]).median_ms, limit)
        if csap.onnxruntime:
            check("CSAP-T eager / onnxruntime (speed-up)", csap.latency.median_ms, csap.onnxruntime.median_ms,
                  1.3, larger=True)
            if csap.optimized:
                check("CSAP-T optimized / onnxruntime (speed-up)", csap.optimized.median_ms,
                      csap.onnxruntime.median_ms, 1.3, larger=True)
    head_by = {r.name: r for r in heads}
    if "csap_tiny head" in head_by and "segnext_tiny head" in head_by:
        csap_head, ham_head = head_by["csap_tiny head"], head_by["segnext_tiny head"]
        check("CSAP head / Ham head latency, eager", csap_head.latency.median_ms, ham_head.latency.median_ms, 0.5)
        if csap_head.optimized and ham_head.optimized:
            check("CSAP head / Ham head latency, optimized", csap_head.optimized.median_ms,
                  ham_head.optimized.median_ms, 0.5)
    return lines


def format_cuda_table(results: List[ThroughputResult]) -> str:
    lines = ["| model | batch | dtype | channels_last | median ms / batch | images/s | peak mem (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.batch} | {r.dtype} | {'yes' if r.channels_last else 'no'} | "
                     f"{r.median_ms:.2f} | {r.images_per_s:.1f} | {r.peak_mem_mb:.0f} |")
    return "\n".join(lines)


def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        info["load_avg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    import torch

    info["torch"] = torch.__version__
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def paper_miou(architecture: str, dataset: str = "ade20k") -> Optional[float]:
    """The paper's mIoU for ``<architecture>.<dataset>`` from the weights manifest, if it lists one."""
    from csap_zoo.manifest import default_manifest

    name = f"{architecture}.{dataset}"
    manifest = default_manifest()
    if name not in manifest:
        return None
    return manifest.get(name).metrics.get("paper", {}).get("mIoU")


def plot(results: List[BenchResult], heads: List[BenchResult], path: str) -> None:
    """Latency vs GMACs (eager hollow, optimized filled, annotated with the paper's ADE20K mIoU where known) and
    the decoder-only comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    untraced = []
    for r in results:
        if r.gmacs is None:
            untraced.append(f"{r.name}: eager {r.latency.median_ms:.0f} ms")
            continue
        color = "tab:blue" if r.name.startswith("csap") else "tab:orange"
        ax.scatter([r.gmacs], [r.latency.median_ms], facecolors="none", edgecolors=color)
        fast = _fast(r)
        ax.scatter([r.gmacs], [fast.median_ms], color=color)
        miou = paper_miou(r.name)
        label = r.name + (f" ({miou} mIoU)" if miou is not None else "")
        is_csap = r.name.startswith("csap")
        ax.annotate(label, (r.gmacs, fast.median_ms), textcoords="offset points", fontsize=7,
                    xytext=(6, -12) if is_csap else (-6, 8), ha="left" if is_csap else "right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GMACs (fvcore, log scale)")
    ax.set_ylabel("median latency (ms, log scale)")
    ax.scatter([], [], facecolors="none", edgecolors="gray", label="eager, as built")
    ax.scatter([], [], color="gray", label="optimized (optimize_for_inference)")
    ax.legend(fontsize=7, loc="upper left")
    if results:
        r0 = results[0]
        ax.set_title(f"{r0.height}x{r0.width}, batch 1, {r0.threads} threads, CPU fp32; blue CSAP, orange SegNeXt",
                     fontsize=9)
    if untraced:
        ax.text(0.99, 0.02, "no GMACs count: " + "; ".join(untraced), transform=ax.transAxes, ha="right",
                fontsize=7)
    head_names = [h.name.replace(" head", "") for h in heads]
    axes[1].bar([i - 0.2 for i in range(len(heads))], [h.latency.median_ms for h in heads], 0.4, label="eager")
    axes[1].bar([i + 0.2 for i in range(len(heads))], [h.optimized.median_ms if h.optimized else 0 for h in heads],
                0.4, label="optimized")
    axes[1].set_xticks(list(range(len(heads))))
    axes[1].set_xticklabels(head_names)
    axes[1].legend(fontsize=7)
    axes[1].set_title("decoder only (MSCAN-T features)", fontsize=9)
    axes[1].set_ylabel("median latency (ms)")
    axes[1].tick_params(axis="x", labelsize=8, rotation=30)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), suffix=".png")
    finally:
        plt.close(fig)


def write_json(payload: Dict[str, Any], path: str) -> None:
    text = json.dumps(payload, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--onnx", nargs="*", default=["csap_tiny"],
                        help="models to also time in onnxruntime (default csap_tiny; none: --onnx)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-optimized", action="store_true", help="skip the optimize_for_inference variant")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-gmacs", action="store_true")
    parser.add_argument("--no-heads", action="store_true", help="skip the decoder-only comparison")
    parser.add_argument("--head-repeats", type=int, default=50,
                        help="timed rounds of the decoder-only comparison (cheap; default 50)")
    parser.add_argument("--upsample", action="store_true", help="time up to full-size logits")
    parser.add_argument("--cuda", action="store_true",
                        help="also measure GPU throughput (fp32/fp16/bf16, contiguous and channels_last)")
    parser.add_argument("--cuda-batch", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)
    height, width = args.size
    info = machine_info()
    print(f"machine: {info}", file=sys.stderr)
    results = bench_models(
        args.models, height, width, num_classes=args.classes, num_threads=args.threads, warmup=args.warmup,
        repeats=args.repeats, channels_last=not args.no_channels_last, optimized=not args.no_optimized,
        onnx=args.onnx or [], memory=not args.no_memory, gmacs=not args.no_gmacs, upsample=args.upsample,
    )
    for result in results:
        print(f"{result.name}: {result.latency.median_ms:.1f} ms", file=sys.stderr)
    heads = [] if args.no_heads else bench_head(height=height, width=width, num_classes=args.classes,
                                                num_threads=args.threads, warmup=args.warmup,
                                                repeats=args.head_repeats)
    info_after = machine_info().get("load_avg_1_5_15")
    print(f"input 1x3x{height}x{width}, {args.classes} classes, batch 1, {args.threads} threads, fp32, CPU; "
          f"{'full-size' if args.upsample else 'native'} logits; median/p90 of {args.repeats} runs "
          f"({args.head_repeats} for the decoders) after {args.warmup} warm-up, every variant round-robin; "
          f"load average before {info.get('load_avg_1_5_15')}, after {info_after}\n")
    print(format_table(results))
    if heads:
        print()
        print(format_head_table(heads))
    lines = targets(results, heads)
    if lines:
        print("\n" + "\n".join(lines))
    cuda: List[ThroughputResult] = []
    if args.cuda:
        import torch

        if not torch.cuda.is_available():
            print("\nno CUDA device: GPU throughput skipped")
        else:
            for name in args.models:
                cuda.extend(bench_cuda_throughput(name, args.cuda_batch, height, width, args.classes))
            print(f"\n{torch.cuda.get_device_name()}, batch {args.cuda_batch}:\n" + format_cuda_table(cuda))
    if args.json:
        write_json({"machine": info, "load_avg_after": info_after, "threads": args.threads,
                    "size": [height, width], "classes": args.classes, "upsample": args.upsample,
                    "models": [r.to_dict() for r in results], "heads": [h.to_dict() for h in heads],
                    "targets": lines, "cuda": [c.to_dict() for c in cuda]}, args.json)
    if args.png:
        plot(results, heads, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
