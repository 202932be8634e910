"""Runtimes side by side: CSAP-T and SegNeXt-T in csap-zoo, onnxruntime and OpenVINO, SegFormer-B0 (transformers,
random weights) eager and in both runtimes, timed from image to label map in ONE round-robin run.

What one timed call does, alike for every contender: a fixed random uint8 image batch -> ImageNet normalisation ->
the network -> bilinear resize of its logits to the image size -> arg-max, band of rows by band. The post-processing
is the same code for all runtime contenders (``csap_zoo.tools.runtimes.label_map``:
``csap_zoo.inference.bands.resize_rows`` and the arg-max), done in torch outside the exported graphs (csap-zoo's
own contender runs ``Segmenter``, whose label map takes ``csap_zoo.inference.bands.label_map_bands``' exact
shortcut where it pays; with random weights the logits are near-ties everywhere and it falls back to the same
resize + arg-max). The exported
graphs return native logits (CSAP/SegNeXt stride 8, SegFormer stride 4), so the runtimes are compared on the
network alone and the post-processing is not a second variable -- except for the two contenders that append the
resize and the arg-max to the OpenVINO graph (whole images): csap-zoo's OpenVINO backend, and ``openvino-labels``,
the same thing done by hand to our ONNX file, so that the backend is also compared with the best a user of OpenVINO
can do. Contenders:

* ``csap-zoo``: ``Segmenter(model, resize=None).predict(uint8 tensor)``, the library's default path
  (``optimize_for_inference``: folded BatchNorms, fused oneDNN convolutions, channels_last); a batch is predicted
  one image at a time, as ``predict`` does;
* ``csap-zoo-openvino``: ``Segmenter(model, resize=None, backend="openvino").predict``: the same pre-processing,
  the network converted to OpenVINO by the library (latency hint, f32, threads pinned), whole-image label maps
  resized and arg-maxed inside OpenVINO;
* ``torch``: the PyTorch module on the whole batch (csap_zoo models optimized as above; SegFormer as transformers
  builds it, eager): default for SegFormer, and for the csap_zoo models when ``--batch`` > 1;
* ``onnxruntime``: the ONNX export (``csap_zoo.tools.export.export_onnx``; SegFormer: ``torch.onnx.export``), CPU
  provider, intra-op threads = --threads, one inter-op thread, no spinning, input shape fixed;
* ``openvino``: the same ONNX file, ``compile_model(..., "CPU", PERFORMANCE_HINT=LATENCY,
  INFERENCE_PRECISION_HINT=f32, INFERENCE_NUM_THREADS=--threads)``, input reshaped to the static shape;
* ``openvino-labels``: that compiled model with the bilinear resize and the arg-max appended to its graph
  (``csap_zoo.inference.backends.label_map_graph``), one call from normalised image to labels (csap_zoo models, batch 1,
  whole images).

Also timed in the same rounds: an fp32 GEMM (--gemm, default 2048^3, torch) whose MAC rate turns each model's
GMACs (fvcore for csap_zoo models, ``torch.utils.flop_counter`` for SegFormer-B0; up to the native logits) into a
compute floor in ms; and the post-processing alone on CSAP-T-shaped logits. A short untimed pause precedes each
timed call, so that idle worker threads of the previous runtime (OpenMP, TBB) do not hold the cores.

Beyond one image: ``--batch 8`` reports throughput (images/s); ``--cityscapes`` runs 1024x2048 images in 1024
windows every 768 pixels (``Segmenter``'s slide mode for csap-zoo; the runtimes' window logits are merged by the same
slide code). Peak memory (on by default there, ``--memory`` elsewhere) is measured per contender in a fresh
process: peak RSS growth of its first call after setup (``clear_refs`` resets the high-water mark), and the
process peak above the imported libraries (weights, compiled graph, arenas).

    python benchmarks/runtimes.py                          # 512x512, batch 1, 2 threads -> benchmarks/results/
    python benchmarks/runtimes.py --batch 8                # throughput, with memory
    python benchmarks/runtimes.py --cityscapes             # 1024x2048 slide, with memory
    python benchmarks/runtimes.py --quick --json /tmp/r.json --md /tmp/r.md --png /tmp/r.png   # tiny smoke run

The ONNX exports have dynamic shapes (one file serves every size; ``--onnx-dir`` keeps them for later runs), except
with ``--static-onnx`` (default with ``--quick``): a static graph per model for the run's one network input shape,
several times faster to export (the runtimes fix the input shape either way). ``--quick`` also builds the csap_zoo
models with one MSCAN block per stage (``--depths 1 1 1 1``; the same layer types, a fraction of the export and
conversion time): a smoke run of the script, not a measurement of CSAP-T or SegNeXt-T.

Run it on an otherwise idle machine; the load average before and after goes into the results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from csap_zoo.fileio import atomic_write
from csap_zoo.inference import cpu_info
from csap_zoo.tools.measurement import LatencyStats, gemm_call, measure_interleaved
from csap_zoo.tools.runtimes import (
    RUNTIMES, RuntimeCall, RuntimeCase, build_runtime_call, export_runtime_onnx, label_map, runtime_gmacs,
    runtime_peak_memory, supported_precisions,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("csap_tiny", "segnext_tiny", "segformer_b0")
MODEL_LABELS = {"csap_tiny": "CSAP-T", "segnext_tiny": "SegNeXt-T", "segformer_b0": "SegFormer-B0"}
RUNTIME_LABELS = {"csap-zoo": "csap-zoo default (Segmenter)", "csap-zoo-torch": "csap-zoo (Segmenter, torch backend)",
                  "csap-zoo-openvino": "csap-zoo (Segmenter, OpenVINO backend)",
                  "torch": "torch", "onnxruntime": "onnxruntime", "openvino": "OpenVINO",
                  "openvino-labels": "OpenVINO, resize + arg-max in its graph"}
GEMM_KEY, POST_KEY = "gemm", "post-processing"


# ----------------------------------------------------------------------------------------------- setup
def contenders_for(models: Sequence[str], runtimes: Optional[Sequence[str]], batch: int,
                    whole: bool = True, precisions: Optional[Sequence[str]] = None) -> List[Tuple[str, str, str]]:
    """(model, runtime, precision) triples in timing order, each runtime in every precision it runs on this CPU
    (``precisions`` narrows that). Default runtimes: csap-zoo's default path and its torch backend (csap_zoo
    models; plus torch on a batch, which csap-zoo predicts image by image) or torch (SegFormer, transformers
    eager), then onnxruntime and OpenVINO. An explicit list is taken as given, skipping csap-zoo for SegFormer (it
    has no such path)."""
    triples = []
    for model in models:
        if runtimes:
            chosen = [r for r in runtimes if not (r.startswith("csap-zoo") and model == "segformer_b0")]
        elif model == "segformer_b0":
            chosen = ["torch", "onnxruntime", "openvino"]
        else:
            chosen = ["csap-zoo", "csap-zoo-torch"] + (["torch"] if batch > 1 else []) + ["onnxruntime",
                                                                                           "openvino"]
            if batch == 1 and whole:
                chosen.append("openvino-labels")
        for runtime in chosen:
            triples.extend((model, runtime, p) for p in supported_precisions(runtime)
                           if precisions is None or p in precisions)
    return triples


def export_all(models: Sequence[str], directory: str, classes: int, size: Tuple[int, int],
               static: Optional[Dict[str, Tuple[int, int, int, int]]] = None,
               depths: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """One ONNX file per model (dynamic shapes, so one serves every size), reused when ``directory`` has it; a
    model in ``static`` gets a static graph for that one input shape instead (its own file name); ``depths``:
    the csap_zoo models' blocks per stage (see ``backbone_args``)."""
    exported = {}
    static = static or {}
    for model in models:
        shape = static.get(model)
        extra = backbone_args(model, depths)
        name = (f"{model}_{classes}c" + ("_depths" + "".join(map(str, depths)) if extra else "")
                + ("_static_" + "x".join(map(str, shape)) if shape else ""))
        path = os.path.join(directory, f"{name}.onnx")
        start = time.perf_counter()
        reused = os.path.exists(path)
        if not reused:
            print(f"exporting {model} to ONNX{' (static ' + str(shape) + ')' if shape else ''} ...",
                  file=sys.stderr, flush=True)
            if shape:
                export_runtime_onnx(model, path, classes, shape[2], shape[3], batch=shape[0], backbone_args=extra)
            else:
                export_runtime_onnx(model, path, classes, *size, backbone_args=extra)
        exported[model] = {"path": path, "reused": reused, "seconds": time.perf_counter() - start,
                           "static_shape": list(shape) if shape else None}
    return exported


def backbone_args(model: str, depths: Optional[Sequence[int]]) -> Optional[Dict[str, Any]]:
    """The backbone options of a csap_zoo model for ``--depths`` (None: the architecture's own; SegFormer-B0 keeps
    its configuration)."""
    return {"depths": tuple(depths)} if depths and model != "segformer_b0" else None


def static_shapes(cases: Sequence[RuntimeCase]) -> Dict[str, Tuple[int, int, int, int]]:
    """The one network input shape of each model's ONNX contenders, for the models whose contenders need just one
    (a static export serves them; a model needing several shapes is left out: it takes the dynamic export)."""
    shapes: Dict[str, set] = {}
    for case in cases:
        if case.runtime in ("onnxruntime", "openvino", "openvino-labels"):
            shapes.setdefault(case.model, set()).update(case.network_shapes())
    return {model: next(iter(found)) for model, found in shapes.items() if len(found) == 1}


def versions() -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "openvino", "onnx", "transformers", "numpy"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", None) or getattr(module, "get_version", lambda: None)()
        except ImportError:
            found[name] = None
    return found


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------- evaluation
def summarize(cases: List[RuntimeCase], stats: Dict[str, LatencyStats], gmacs: Dict[str, Dict[str, float]],
              gmac_rate: float, memory: Dict[str, Dict[str, Any]], agreement: Dict[str, float],
              info: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per contender: latency, images/s, ratios to the fastest contender of the same model and to the
    model's compute floor (its GMACs for the whole call over the GEMM's MAC rate)."""
    rows = []
    for case in cases:
        s = stats[case.key]
        per_call = gmacs[case.model]["gmacs"] * case.windows() * case.batch
        rows.append({"key": case.key, "model": case.model, "runtime": case.runtime, "precision": case.precision,
                     "median_ms": s.median_ms,
                     "p90_ms": s.p90_ms, "min_ms": s.min_ms, "runs": s.runs,
                     "images_per_s": case.batch * 1000.0 / s.median_ms, "gmacs_per_call": per_call,
                     "floor_ms": per_call / gmac_rate * 1000.0, "memory": memory.get(case.key),
                     "label_agreement": agreement.get(case.key), "setup": info.get(case.key, {})})
    for row in rows:
        fastest = min(r["median_ms"] for r in rows if r["model"] == row["model"])
        row["vs_fastest"] = row["median_ms"] / fastest
        row["vs_floor"] = row["median_ms"] / row["floor_ms"]
    return rows


def targets(rows: List[Dict[str, Any]], bf16_cpu: bool) -> List[Dict[str, Any]]:
    """The issue's targets from the medians, every precision included: csap-zoo's default path (fp32) within 1.1x
    of its fastest fp32 path; CSAP-T's best path (the fastest csap-zoo contender, any precision) <= 0.83x the
    fastest SegNeXt-T and <= 0.40x the fastest SegFormer-B0 contender (any runtime, any precision); csap-zoo
    faster than CSAP-T in every other runtime at the same precision; and, on a CPU with bf16, the best path within
    1.0x of the fp32 compute floor. A target whose contenders were not run is reported as not evaluated."""
    by = {r["key"]: r for r in rows}
    out: List[Dict[str, Any]] = []

    def check(label: str, subject: Optional[Dict[str, Any]], other: Optional[float], limit: float, strict: bool,
              missing: str) -> None:
        if subject is None or other is None:
            out.append({"label": label, "met": None, "note": f"not evaluated (needs {missing})"})
            return
        ratio = subject["median_ms"] / other
        out.append({"label": label, "ratio": ratio, "limit": limit, "op": "<" if strict else "<=",
                    "met": ratio < limit if strict else ratio <= limit, "subject": subject["key"]})

    def fastest(model: str, where=lambda r: True) -> Optional[Dict[str, Any]]:
        found = [r for r in rows if r["model"] == model and where(r)]
        return min(found, key=lambda r: r["median_ms"]) if found else None

    def ms(row: Optional[Dict[str, Any]]) -> Optional[float]:
        return row["median_ms"] if row else None

    ours = lambda r: r["runtime"].startswith("csap-zoo")  # noqa: E731
    default = by.get("csap_tiny|csap-zoo|fp32")
    check("CSAP-T default path (Segmenter(model), fp32) / its fastest fp32 path", default,
          ms(fastest("csap_tiny", lambda r: ours(r) and r["precision"] == "fp32")), 1.1, False, "csap-zoo fp32")
    best = fastest("csap_tiny", ours)
    name = f"CSAP-T best path ({best['runtime']}, {best['precision']})" if best else "CSAP-T best path"
    check(f"{name} / fastest SegNeXt-T", best, ms(fastest("segnext_tiny")), 0.83, False, "segnext_tiny")
    check(f"{name} / fastest SegFormer-B0", best, ms(fastest("segformer_b0")), 0.4, False, "segformer_b0")
    for precision in ("fp32", "bf16", "int8"):
        mine = fastest("csap_tiny", lambda r: ours(r) and r["precision"] == precision)
        other = fastest("csap_tiny", lambda r: not ours(r) and r["precision"] == precision)
        if mine is not None and other is not None:
            check(f"CSAP-T csap-zoo {precision} / fastest other CSAP-T {precision} ({other['runtime']}; faster)",
                  mine, other["median_ms"], 1.0, True, "")
    if bf16_cpu:
        check(f"{name} / CSAP-T fp32 compute floor", best, best["floor_ms"] if best else None, 1.0, False,
              "csap_tiny")
    else:
        out.append({"label": "CSAP-T best path / fp32 compute floor", "met": None,
                    "note": "not evaluated (this CPU has no bf16 instructions)"})
    return out


def target_lines(items: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for t in items:
        if t["met"] is None:
            lines.append(f"- {t['label']}: {t['note']}")
        else:
            lines.append(f"- {t['label']}: {t['ratio']:.2f}x (target {t['op']} {t['limit']}x) "
                         f"{'met' if t['met'] else 'NOT met'}")
    return lines


# ----------------------------------------------------------------------------------------------- output
def _mb(memory: Optional[Dict[str, Any]], key: str) -> str:
    return "-" if not memory else f"{memory[key]:.0f}"


def format_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| contender | precision | model | median ms | p90 ms | images/s | vs fastest of model "
             "| vs fp32 compute floor | call peak MiB | process peak MiB | labels = first contender |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["label_agreement"] is None else f"{100 * r['label_agreement']:.1f}%"
        lines.append(f"| {RUNTIME_LABELS[r['runtime']]} | {r['precision']} | {MODEL_LABELS.get(r['model'], r['model'])} "
                     f"| {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['images_per_s']:.2f} | {r['vs_fastest']:.2f}x "
                     f"| {r['vs_floor']:.2f}x (floor {r['floor_ms']:.1f} ms) | {_mb(r['memory'], 'call_peak_mb')} "
                     f"| {_mb(r['memory'], 'process_peak_mb')} | {agree} |")
    return "\n".join(lines)


def format_markdown(payload: Dict[str, Any]) -> str:
    s = payload["settings"]
    gemm = payload["gemm"]
    post = payload.get("post_processing")
    lines = [f"# Runtimes side by side ({payload['scenario']})", "",
             f"{payload['date']}; {payload['machine']['cpu_model']} ({payload['machine']['cpu_count']} logical CPUs; "
             f"{' '.join(payload['machine']['cpu']['flags']) or 'no AVX2'}); "
             f"load average before {payload['machine']['load_avg_before']}, after "
             f"{payload['machine']['load_avg_after']}; " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()
                                                                      if v),
             "",
             f"Image to label map, batch {s['batch']} of {s['height']}x{s['width']} uint8 images"
             + (f", slide windows {s['crop'][0]}x{s['crop'][1]} every {s['stride'][0]}x{s['stride'][1]}"
                if s["mode"] == "slide" else "")
             + f", {s['classes']} classes"
             + (f", csap_zoo models with {'-'.join(map(str, s['depths']))} MSCAN blocks per stage" if s.get("depths")
                else "")
             + f", every precision each runtime has on this CPU, {s['threads']} threads everywhere; median / p90 of "
               f"{s['repeats']} "
               f"round-robin rounds after {s['warmup']} warm-up calls each. Post-processing (bilinear resize of the "
               "native logits to the image, arg-max) is the same banded torch code for every contender except "
               "csap-zoo's (its exact label-map shortcut, falling back to that code), its OpenVINO backend and "
               "'OpenVINO, resize + arg-max in its graph' (both: resize and arg-max appended to the OpenVINO graph "
               "for whole images). The compute floor "
               "is the model's GMACs (fvcore; SegFormer: torch.utils.flop_counter) over the GEMM's rate. Memory: a "
               "fresh process per contender; call peak = peak RSS growth during its first call, process peak = peak "
               "RSS above the imported libraries. Labels: share of pixels equal to the model's first contender "
               "(random weights; SegNeXt's head is randomised at inference, so it never reaches 100%).", "",
             format_table(payload["contenders"]), "",
             f"- fp32 GEMM {gemm['size']}^3 (torch, {s['threads']} threads): {gemm['median_ms']:.1f} ms median, "
             f"{gemm['gmac_per_s']:.1f} GMAC/s",
             ]
    if post:
        lines.append(f"- post-processing alone (resize + arg-max of CSAP-T-shaped logits {post['shape']}): "
                     f"{post['median_ms']:.1f} ms median")
    for model, g in payload["gmacs"].items():
        lines.append(f"- {MODEL_LABELS.get(model, model)}: {g['gmacs']:.2f} GMACs per {g['size'][0]}x{g['size'][1]} "
                     f"network input ({g['counter']}; flop counter {g['flop_counter']:.2f})")
    lines += ["", "## Targets", ""] + target_lines(payload["targets"])
    return "\n".join(lines) + "\n"


def plot(payload: Dict[str, Any], path: str) -> None:
    """Median latency per contender, grouped by model (p90 as the error bar), each model's compute floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["contenders"]
    colors = {"csap-zoo": "tab:blue", "csap-zoo-torch": "tab:olive", "csap-zoo-openvino": "tab:cyan",
              "torch": "tab:gray", "onnxruntime": "tab:orange", "openvino": "tab:purple",
              "openvino-labels": "tab:pink"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.5))
    x, ticks, position = 0.0, [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        start = x
        for r in group:
            ax.bar(x, r["median_ms"], 0.8, color=colors[r["runtime"]],
                   yerr=[[0], [max(0.0, r["p90_ms"] - r["median_ms"])]], capsize=3)
            ax.text(x, max(r["median_ms"], r["p90_ms"]), f"{r['median_ms']:.0f}", ha="center", va="bottom", fontsize=7)
            position.append(x)
            ticks.append(f"{MODEL_LABELS.get(model, model)}\n{r['runtime']}\n{r['precision']}")
            x += 1.0
        ax.hlines(group[0]["floor_ms"], start - 0.45, x - 0.55, colors="black", linestyles="dashed", linewidth=1)
        x += 0.6
    ax.plot([], [], "k--", linewidth=1, label="compute floor (GMACs / GEMM rate)")
    ax.legend(fontsize=8)
    ax.set_xticks(position)
    ax.set_xticklabels(ticks, fontsize=7)
    ax.set_ylabel("median ms, image to label map")
    s = payload["settings"]
    ax.set_title(f"{payload['scenario']}: batch {s['batch']}, {s['height']}x{s['width']}, {s['threads']} threads, "
                 f"- {payload['machine']['cpu_model']}", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def _write_text(path: str, text: str) -> None:
    """Through the package's atomic writer (a complete file or none, the usual permissions)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                        help="image size: one value (square) or H W (default 512; --cityscapes 1024 2048)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20; --quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls of each (default 3; --quick 1)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--contenders", nargs="+", choices=RUNTIMES, default=None,
                        help="runtimes to run for every model (default: see the module docstring)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "int8"), default=None,
                        help="precisions to run (default: every one each runtime has on this CPU)")
    parser.add_argument("--cityscapes", action="store_true",
                        help="1024x2048 images in 1024 windows every 768 pixels (slide mode)")
    parser.add_argument("--crop", type=int, default=1024, help="slide window (with --cityscapes)")
    parser.add_argument("--stride", type=int, default=768, help="slide step (with --cityscapes)")
    parser.add_argument("--slide-batch", type=int, default=4, help="windows per network call (Segmenter's default)")
    parser.add_argument("--gemm", type=int, default=None, help="GEMM size (default 2048; --quick 256)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                        help="peak memory per contender in fresh processes (default: on with --batch > 1 or "
                             "--cityscapes)")
    parser.add_argument("--pause", type=float, default=0.01, help="untimed seconds before each timed call")
    parser.add_argument("--onnx-dir", default=None,
                        help="keep the ONNX exports here and reuse them (delete them after changing model code)")
    parser.add_argument("--static-onnx", action=argparse.BooleanOptionalAction, default=None,
                        help="export each model for the one input shape of the run (static graphs, several times "
                             "faster to export, usable at that shape only; default: on with --quick)")
    parser.add_argument("--depths", type=int, nargs=4, default=None, metavar="N",
                        help="MSCAN blocks per stage of the csap_zoo models (default: the architectures' own; "
                             "--quick: 1 1 1 1, smaller networks that export and convert in a fraction of the time)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one block per stage and 2 rounds, for tests (outputs in /tmp)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        parser.error("--size takes one value or two (H W)")
    if args.quick:
        args.size = args.size or ([64, 128] if args.cityscapes else [64])
        args.crop, args.stride = (64, 32) if args.cityscapes else (args.crop, args.stride)
    size = args.size or ([1024, 2048] if args.cityscapes else [512])
    args.height, args.width = (size[0], size[0]) if len(size) == 1 else size
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.gemm = args.gemm or (256 if args.quick else 2048)
    if args.memory is None:
        args.memory = args.batch > 1 or args.cityscapes
    if args.static_onnx is None:
        args.static_onnx = args.quick
    if args.depths is None and args.quick:
        args.depths = [1, 1, 1, 1]
    if args.batch < 1 or args.threads < 1 or args.repeats < 1:
        parser.error("--batch, --threads and --repeats must be >= 1")
    if args.cityscapes:
        stem = f"runtimes_cityscapes_slide_{args.threads}threads"
    else:
        stem = (f"runtimes_{args.height}" + (f"x{args.width}" if args.width != args.height else "")
                + (f"_b{args.batch}" if args.batch > 1 else "") + f"_{args.threads}threads")
    out_dir = Path(tempfile.gettempdir()) / "csap_zoo_runtimes" if args.quick else RESULTS
    for ext in ("json", "md", "png"):
        if getattr(args, ext) is None:
            setattr(args, ext, str(out_dir / f"{stem}{'_quick' if args.quick else ''}.{ext}"))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    mode = "slide" if args.cityscapes else "whole"
    scenario = ("Cityscapes slide" if args.cityscapes else f"{args.height}x{args.width}") + \
        (f", batch {args.batch}" if args.batch > 1 else "") + (" (quick)" if args.quick else "")
    load_before = load_average()
    torch.set_num_threads(args.threads)
    triples = contenders_for(args.models, args.contenders, args.batch, whole=not args.cityscapes,
                             precisions=args.precisions)
    exported_models = sorted({m for m, r, _ in triples if r in ("onnxruntime", "openvino", "openvino-labels")},
                             key=args.models.index)

    def make_case(model: str, runtime: str, precision: str, onnx_path: Optional[str] = None) -> RuntimeCase:
        return RuntimeCase(model, runtime, args.height, args.width, args.batch, args.classes, args.threads, mode,
                           args.crop, args.stride, args.slide_batch, onnx_path, backbone_args(model, args.depths),
                           precision)

    with tempfile.TemporaryDirectory() as tmp:
        static = static_shapes([make_case(m, r, p, "-") for m, r, p in triples]) if args.static_onnx else None
        exports = export_all(exported_models, args.onnx_dir or tmp, args.classes, (args.height, args.width)
                             if mode == "whole" else (min(args.crop, args.height), min(args.crop, args.width)),
                             static, args.depths)
        cases = [make_case(model, runtime, precision, exports[model]["path"] if model in exports else None)
                 for model, runtime, precision in triples]
        calls: Dict[str, RuntimeCall] = {}
        for case in cases:
            print(f"preparing {case.key} ...", file=sys.stderr, flush=True)
            calls[case.key] = build_runtime_call(case)
        # label agreement with each model's first contender (outside timing; also a first warm-up call)
        agreement: Dict[str, float] = {}
        with torch.inference_mode():
            first: Dict[str, Any] = {}
            for case in cases:
                labels = calls[case.key].labels()
                if case.model not in first:
                    first[case.model] = labels
                agreement[case.key] = float((labels == first[case.model]).mean())
        gemm, gemm_gmacs = gemm_call(args.gemm)
        timed = {key: call.fn for key, call in calls.items()}
        timed[GEMM_KEY] = gemm
        post_shape = None
        if mode == "whole":
            post_shape = (args.batch, args.classes, -(-args.height // 8), -(-args.width // 8))
            logits = torch.randn(post_shape, generator=torch.Generator().manual_seed(0))
            timed[POST_KEY] = lambda: label_map(logits, (args.height, args.width))
        print(f"timing {len(timed)} callables round-robin, {args.repeats} rounds ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        stats = measure_interleaved(timed, args.warmup, args.repeats, args.threads, pause_s=args.pause)
        timing_s = time.perf_counter() - start
        setup = {key: call.info for key, call in calls.items()}
        del calls, timed  # free the contenders before the memory probes start their processes
        window = cases[0].window() if cases else (args.height, args.width)
        gmacs = {}
        for model in args.models:
            gmacs[model] = {**runtime_gmacs(model, *window, num_classes=args.classes,
                                            backbone_args=backbone_args(model, args.depths)), "size": list(window)}
        memory: Dict[str, Dict[str, Any]] = {}
        if args.memory:
            for case in cases:
                print(f"memory of {case.key} (fresh process) ...", file=sys.stderr, flush=True)
                memory[case.key] = runtime_peak_memory(case)
    gemm_stats = stats[GEMM_KEY]
    gmac_rate = gemm_gmacs / (gemm_stats.median_ms / 1000.0)
    rows = summarize(cases, stats, gmacs, gmac_rate, memory, agreement, setup)
    payload = {
        "scenario": scenario,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu_info().model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "cpu": cpu_info().to_dict(),
                    "load_avg_before": load_before, "load_avg_after": load_average()},
        "versions": versions(),
        "settings": {"height": args.height, "width": args.width, "batch": args.batch, "threads": args.threads,
                     "classes": args.classes, "mode": mode, "crop": [args.crop, args.crop],
                     "stride": [args.stride, args.stride], "slide_batch": args.slide_batch, "repeats": args.repeats,
                     "warmup": args.warmup, "pause_s": args.pause, "precisions": args.precisions, "quick": args.quick,
                     "static_onnx": args.static_onnx, "depths": args.depths},
        "contenders": rows,
        "gemm": {"size": args.gemm, "median_ms": gemm_stats.median_ms, "p90_ms": gemm_stats.p90_ms,
                 "gmacs": gemm_gmacs, "gmac_per_s": gmac_rate},
        "post_processing": ({"shape": list(post_shape), "median_ms": stats[POST_KEY].median_ms,
                             "p90_ms": stats[POST_KEY].p90_ms} if post_shape else None),
        "gmacs": gmacs,
        "onnx_exports": exports,
        "timing_seconds": timing_s,
    }
    payload["targets"] = targets(rows, cpu_info().bf16)
    markdown = format_markdown(payload)
    print(markdown)
    _write_text(args.json, json.dumps(payload, indent=2) + "\n")
    _write_text(args.md, markdown)
    plot(payload, args.png)
    print(f"wrote {args.json}, {args.md}, {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
