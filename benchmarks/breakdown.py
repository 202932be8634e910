"""Where CSAP-T's CPU time goes, and what that means for its latency ratio to SegNeXt-T.

Times, round-robin on one input, the shared MSCAN-T backbone and each decoder on its features, as built (eager,
contiguous) and optimized (``csap_zoo.models.optimize_for_inference``: fused blocks, channels_last, heads projecting before
the resize), then prints the torch.profiler operators that dominate the CSAP-T forward before (as built) and after
optimizing, and OpenVINO's own node counters for what the OpenVINO backend runs per image (network, resize and
arg-max in one graph) where openvino is installed.

Since both models share the backbone (B ms), CSAP-T / SegNeXt-T = (B + csap_head) / (B + ham_head); the script
prints that decomposition and the best ratio any decoder could reach (a free one: B / (B + ham_head)).

    python benchmarks/breakdown.py                      # 1x3x512x512, 2 threads
    python benchmarks/breakdown.py --threads 1 --top 25
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch


def _decompose(threads: int, height: int, width: int, warmup: int, repeats: int) -> Dict[str, float]:
    from csap_zoo.tools.measurement import measure_interleaved
    from csap_zoo.models import build_model, optimize_for_inference

    torch.manual_seed(0)
    csap = build_model("csap_tiny", num_classes=150).eval()
    segnext = build_model("segnext_tiny", num_classes=150).eval()
    fast_csap, fast_segnext = optimize_for_inference(csap), optimize_for_inference(segnext)
    x = torch.randn(1, 3, height, width)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        feats = csap.forward_features(csap.prepare_input(x))
        feats_cl = fast_csap.forward_features(fast_csap.prepare_input(x_cl))
    calls: Dict[str, Callable[[], Any]] = {
        "eager backbone": lambda: csap.forward_features(x),
        "eager csap head": lambda: csap.decode_head(feats),
        "eager ham head": lambda: segnext.decode_head(feats),
        "eager csap_tiny": lambda: csap(x, upsample=False),
        "eager segnext_tiny": lambda: segnext(x, upsample=False),
        "optimized backbone": lambda: fast_csap.forward_features(x_cl),
        "optimized csap head": lambda: fast_csap.decode_head(feats_cl),
        "optimized ham head": lambda: fast_segnext.decode_head(feats_cl),
        "optimized csap_tiny": lambda: fast_csap(x, upsample=False),
        "optimized segnext_tiny": lambda: fast_segnext(x, upsample=False),
    }
    stats = measure_interleaved(calls, warmup, repeats, threads)
    return {key: value.median_ms for key, value in stats.items()}


def _top_ops(threads: int, height: int, width: int, top: int, optimized: bool, runs: int = 5) -> List[str]:
    """The torch.profiler operators that dominate the CSAP-T forward, as built (before) or optimized (after),
    averaged over ``runs`` profiled forwards."""
    from torch.profiler import ProfilerActivity, profile

    from csap_zoo.models import build_model, optimize_for_inference

    torch.manual_seed(0)
    model = build_model("csap_tiny", num_classes=150).eval()
    if optimized:
        model = optimize_for_inference(model)
    x = torch.randn(1, 3, height, width)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(2):
                model(x, upsample=False)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(runs):
                    model(x, upsample=False)
    finally:
        torch.set_num_threads(before)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / runs / 1000
    mode = "optimized" if optimized else "eager (as built)"
    lines = [f"{mode} csap_tiny under torch.profiler: {total:.1f} ms self CPU time per forward; top operators:",
             "| ms / forward | calls | operator | input shapes |", "|---|---|---|---|"]
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        shapes = str([s for s in event.input_shapes if s][:3])
        lines.append(f"| {event.self_cpu_time_total / runs / 1000:.2f} | {event.count // runs} | {event.key} "
                     f"| {shapes} |")
    return lines


def _conv_gmacs(model: torch.nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """GMACs of the model's convolutions and linear layers by the node kind OpenVINO runs them as: 1x1
    (``Convolution`` 1x1), depthwise (``GroupConvolution``), other dense convolutions, linear layers."""
    totals = {"1x1": 0.0, "depthwise": 0.0, "dense kxk": 0.0, "linear": 0.0}

    def count(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear):
            totals["linear"] += output.numel() * module.in_features / 1e9
            return
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        kind = ("depthwise" if module.groups > 1 else "1x1" if tuple(module.kernel_size) == (1, 1)
                else "dense kxk")
        totals[kind] += output.numel() * per_output / 1e9

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.inference_mode():
            model(x, upsample=False)
    finally:
        for hook in hooks:
            hook.remove()
    return totals


def _openvino_ops(threads: int, height: int, width: int, top: int, gemm_size: int = 2048,
                  model: Optional[torch.nn.Module] = None) -> List[str]:
    """OpenVINO's own per-node timings (``PERF_COUNT``) of what ``Segmenter(model, backend="openvino")`` runs for
    one whole image: the CSAP-T network with the resize to the image and the arg-max in its graph, grouped by node
    type and kernel; then the convolutions' MAC rates against an fp32 GEMM timed alongside (the compute floor's
    yardstick; ``gemm_size`` cubed). ``model``: the CSAP-T to profile (default: seed-0 random weights, 150
    classes)."""
    import numpy as np
    import openvino as ov

    from csap_zoo.inference.backends import OPENVINO_CPU_CONFIG, OpenVINONetwork, label_map_graph
    from csap_zoo.inference.bands import ResizeStep
    from csap_zoo.models import build_model
    from csap_zoo.tools.measurement import gemm_call, threads as torch_threads

    if model is None:
        torch.manual_seed(0)
        model = build_model("csap_tiny", num_classes=150)
    model = model.eval()
    network = OpenVINONetwork(model, threads=threads, cache_dir=False)
    shape = (1, 3, height, width)
    native = network.native_shape(shape)
    steps = (ResizeStep(tuple(native[2:]), (height, width), None),)
    graph = label_map_graph(ov, network.network_model(shape), steps, native[1])
    config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    request = ov.Core().compile_model(graph, "CPU", config).create_infer_request()
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gemm, gemm_gmacs = gemm_call(gemm_size)
    with torch_threads(threads):
        for _ in range(2):
            request.infer({0: image})
            gemm()
        runs = 5
        by_kind: Dict[str, float] = {}
        gemm_ms: List[float] = []
        for _ in range(runs):  # interleaved with the GEMM, so both see the same machine
            request.infer({0: image})
            for node in request.profiling_info:
                kind = f"{node.node_type} [{node.exec_type}]"
                by_kind[kind] = by_kind.get(kind, 0.0) + node.real_time.total_seconds() * 1000 / runs
            start = time.perf_counter()
            gemm()
            gemm_ms.append((time.perf_counter() - start) * 1000)
    gemm_rate = gemm_gmacs / (sorted(gemm_ms)[len(gemm_ms) // 2] / 1000)
    total = sum(by_kind.values())
    lines = [f"csap_tiny in the OpenVINO backend (network + resize to {height}x{width} + arg-max in one graph), "
             f"OpenVINO's per-node counters: {total:.1f} ms per image; top node kinds:",
             "| ms / image | share | node type [kernel] |", "|---|---|---|"]
    for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"| {ms:.2f} | {ms / total:.0%} | {kind} |")
    gmacs = _conv_gmacs(model, torch.randn(shape))
    pointwise_ms = sum(ms for kind, ms in by_kind.items() if kind.startswith("Convolution [") and "1x1" in kind)
    depthwise_ms = sum(ms for kind, ms in by_kind.items() if kind.startswith("GroupConvolution"))

    def rate(kind: str, ms: float, share: str) -> str:
        if ms <= 0:  # kernel names vary by CPU: no node matched this kind
            return f"{gmacs[kind]:.2f} GMAC, no {kind} nodes recognised in the counters"
        return (f"{gmacs[kind]:.2f} GMAC in {ms:.1f} ms = {gmacs[kind] / ms * 1000:.0f} GMAC/s "
                f"({gmacs[kind] / ms * 1000 / gemm_rate:.0%}{share})")

    lines.append("")
    lines.append(f"fp32 GEMM alongside: {gemm_rate:.0f} GMAC/s. "
                 f"1x1 convolutions: {rate('1x1', pointwise_ms, ' of the GEMM')}; "
                 f"depthwise convolutions: {rate('depthwise', depthwise_ms, ': memory-bound')}; "
                 f"all convolutions and linear layers {sum(gmacs.values()):.2f} GMAC, a floor of "
                 f"{sum(gmacs.values()) / gemm_rate * 1000:.1f} ms at the GEMM's rate")
    return lines


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--top", type=int, default=15, help="profiler operators to list (0: none)")
    parser.add_argument("--profile-runs", type=int, default=5, help="forwards profiled for the operator tables")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO backend's node profile")
    args = parser.parse_args(argv)
    height, width = args.size
    ms = _decompose(args.threads, height, width, args.warmup, args.repeats)
    print(f"1x3x{height}x{width}, {args.threads} threads, fp32 CPU, native logits; medians of {args.repeats} "
          f"round-robin runs\n")
    print("| part | eager ms | optimized ms |\n|---|---|---|")
    for part in ("backbone", "csap head", "ham head", "csap_tiny", "segnext_tiny"):
        print(f"| {part} | {ms['eager ' + part]:.1f} | {ms['optimized ' + part]:.1f} |")
    print()
    for mode in ("eager", "optimized"):
        backbone, csap_head, ham_head = (ms[f"{mode} {p}"] for p in ("backbone", "csap head", "ham head"))
        print(f"- {mode}: CSAP-T / SegNeXt-T measured {ms[f'{mode} csap_tiny'] / ms[f'{mode} segnext_tiny']:.2f}x; "
              f"from the parts (B + csap head) / (B + ham head) = {(backbone + csap_head) / (backbone + ham_head):.2f}x; "
              f"the backbone is {backbone / (backbone + csap_head):.0%} of CSAP-T; a zero-cost decoder would give "
              f"{backbone / (backbone + ham_head):.2f}x; csap head / ham head {csap_head / ham_head:.2f}x")
    if args.top:
        for optimized in (False, True):
            print()
            print("\n".join(_top_ops(args.threads, height, width, args.top, optimized, args.profile_runs)))
        if not args.no_openvino and importlib.util.find_spec("openvino") is not None:
            print()
            print("\n".join(_openvino_ops(args.threads, height, width, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
