"""GPU throughput and training speed: CSAP-T, SegNeXt-T and SegFormer-B0 (transformers, random weights).

Inference: images/s of a forward to the native logits (csap_zoo models stride 8, SegFormer stride 4; the final resize
and arg-max are left out, as in FLOP tables) for every batch size, autocast dtype (fp32 = no autocast; fp16 and bf16
under ``torch.autocast``), memory layout (contiguous / channels_last, model and input) and execution (eager /
``torch.compile``, default mode, static shapes, compiled afresh per configuration); median of CUDA-event timings
after warm-up, peak allocated memory (``torch.cuda.max_memory_allocated``) of the timed calls. The models run as
built (no ``optimize_for_inference``: ``Segmenter`` applies it on the CPU only). ``torch.compile`` runs at the
``--compile-batches`` (default: the largest batch) to keep the compile time bounded.

Training: one AMP step as ``csap_zoo.training`` runs it (train mode, full-size logits, cross-entropy with ignore
index 255 in float32, AdamW with the recipe's parameter groups: lr 6e-5, weight decay 0.01, head lr x10; fp16 with a
gradient scaler, bf16 without), at batch 16 of 512x512 crops: its/s, peak memory, and the wall time of a
160k-iteration recipe at that speed (one GPU, data loading not included).

    python benchmarks/gpu.py                                   # full sweep -> benchmarks/results/gpu_<device>.*
    python benchmarks/gpu.py --no-compile --batches 1 16       # quicker
    python benchmarks/gpu.py --dry-run --json /tmp/g.json      # the whole script on the CPU, tiny sizes (32x32)

Without a CUDA device (and without --dry-run) it stops with one error line. cudnn.benchmark is on; TF32 stays at
torch's defaults (on for cuDNN convolutions, off for matmuls), recorded in the results.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from csap_zoo.fileio import atomic_write
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("csap_tiny", "segnext_tiny", "segformer_b0")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")
IGNORE_INDEX = 255
RECIPE_ITERS = 160_000


# ----------------------------------------------------------------------------------------------- timing
def _autocast(device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> Dict[str, float]:
    """Median / min milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on the CPU) after ``warmup`` calls;
    ``first_ms`` is the first warm-up call (the compile time under ``torch.compile``; with ``warmup=0``, as in a dry
    run, the first timed call), ``peak_mem_mb`` the peak allocated CUDA memory of the timed calls (None on the
    CPU)."""
    cuda = device.type == "cuda"
    first_ms = None
    if warmup > 0:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        first_ms = (time.perf_counter() - start) * 1000.0
    for _ in range(max(0, warmup - 1)):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            begin_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin_s) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "first_ms": times[0] if first_ms is None else first_ms,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None}


def _release(device: torch.device) -> None:
    """Free the previous configuration's CUDA memory before the next one (on the CPU of a dry run there is no
    cache to empty: a full ``gc.collect()`` there, with torch and transformers loaded, cost more than the run)."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# ----------------------------------------------------------------------------------------------- models
def build_model(name: str, classes: int, train: bool) -> nn.Module:
    """Seed-0 random weights: a csap_zoo Segmentor or transformers' SegFormer-B0 (eval mode unless ``train``)."""
    from csap_zoo.tools.profiling import segformer_b0

    torch.manual_seed(0)
    if name == "segformer_b0":
        model = segformer_b0(classes)
    else:
        from csap_zoo.models.registry import build_model as build

        model = build(name, num_classes=classes)
    return model.train(train)


def native_logits(name: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "segformer_b0":
        return lambda x: model(pixel_values=x).logits
    return lambda x: model(x, upsample=False)


def full_logits(name: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training forward: logits at the input size (SegFormer's stride-4 logits resized as its own loss does)."""
    if name == "segformer_b0":
        def forward(x: torch.Tensor) -> torch.Tensor:
            logits = model(pixel_values=x).logits
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

        return forward
    return lambda x: model(x)


# ----------------------------------------------------------------------------------------------- inference
def bench_inference(name: str, args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:
    rows = []
    base = build_model(name, args.classes, train=False).to(device)
    for layout in args.layouts:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = base.to(memory_format=memory_format)
        for compiled in args.executions:
            batches = args.batches if compiled == "eager" else args.compile_batches
            for dtype_name in args.dtypes if compiled == "eager" else args.compile_dtypes:
                for batch in batches:
                    row = {"model": name, "batch": batch, "dtype": dtype_name, "layout": layout,
                           "execution": compiled, "height": args.height, "width": args.width}
                    try:
                        fn = native_logits(name, model)
                        if compiled == "compile":
                            torch._dynamo.reset()
                            fn = torch.compile(fn, dynamic=False)
                        x = torch.randn(batch, 3, args.height, args.width, device=device)
                        x = x.contiguous(memory_format=memory_format)

                        def call(fn=fn, x=x, dtype_name=dtype_name) -> Any:
                            with torch.inference_mode(), _autocast(device, dtype_name):
                                return fn(x)

                        stats = time_calls(call, args.warmup, args.repeats, device)
                        row.update(stats, images_per_s=batch * 1000.0 / stats["median_ms"])
                        if compiled == "compile":
                            row["compile_s"] = stats["first_ms"] / 1000.0
                    except Exception as err:  # record and go on: one OOM / compile failure must not end the sweep
                        row["error"] = ("out of memory" if _is_oom(err) else f"{type(err).__name__}: {err}")[:300]
                    finally:
                        fn = x = call = None
                        _release(device)
                    rows.append(row)
                    print(_progress(row), file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- training
def bench_training(name: str, args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:
    from csap_zoo.training.optim import param_groups

    rows = []
    template = build_model(name, args.classes, train=True)  # on the CPU; every configuration trains a fresh copy
    for layout in args.train_layouts:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for dtype_name in args.train_dtypes:
            row = {"model": name, "batch": args.train_batch, "dtype": dtype_name, "layout": layout,
                   "height": args.train_size[0], "width": args.train_size[1], "optimizer": "AdamW",
                   "lr": 6e-5, "weight_decay": 0.01, "head_lr_mult": 10.0}
            try:
                model = copy.deepcopy(template).to(device).to(memory_format=memory_format)
                forward = full_logits(name, model)
                optimizer = torch.optim.AdamW(param_groups(model, 6e-5, 0.01, "mmseg", 10.0), lr=6e-5,
                                              betas=(0.9, 0.999), weight_decay=0.01)
                scaler = torch.amp.GradScaler(device.type, enabled=dtype_name == "fp16")
                gen = torch.Generator().manual_seed(0)
                images = torch.randn(args.train_batch, 3, *args.train_size, generator=gen).to(device)
                images = images.contiguous(memory_format=memory_format)
                targets = torch.randint(0, args.classes, (args.train_batch, *args.train_size), generator=gen)
                targets[:, :8] = IGNORE_INDEX  # a few ignored pixels, as real masks have
                targets = targets.to(device)

                def step() -> None:
                    with _autocast(device, dtype_name):
                        logits = forward(images)
                    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)

                stats = time_calls(step, args.train_warmup, args.train_repeats, device)
                its = 1000.0 / stats["median_ms"]
                row.update(stats, its_per_s=its, images_per_s=its * args.train_batch,
                           hours_for_160k=RECIPE_ITERS / its / 3600.0)
            except Exception as err:
                row["error"] = ("out of memory" if _is_oom(err) else f"{type(err).__name__}: {err}")[:300]
            finally:
                model = optimizer = forward = step = images = targets = None
                _release(device)
            rows.append(row)
            print(_progress(row), file=sys.stderr, flush=True)
    return rows


def _progress(row: Dict[str, Any]) -> str:
    what = " ".join(str(row[k]) for k in ("model", "batch", "dtype", "layout", "execution") if k in row)
    if "error" in row:
        return f"{what}: {row['error']}"
    rate = f"{row['its_per_s']:.2f} it/s" if "its_per_s" in row else f"{row['images_per_s']:.1f} images/s"
    return f"{what}: {row['median_ms']:.2f} ms, {rate}"


# ----------------------------------------------------------------------------------------------- output
def _mem(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_markdown(payload: Dict[str, Any]) -> str:
    d, s = payload["device"], payload["settings"]
    lines = [f"# GPU throughput and training speed{' (dry run on the CPU)' if payload['dry_run'] else ''}", "",
             f"{payload['date']}; {d['name']}; torch {d['torch']}, CUDA {d['cuda']}, cuDNN {d['cudnn']}; "
             f"cudnn.benchmark {d['cudnn_benchmark']}, TF32 conv {d['tf32_cudnn']} / matmul {d['tf32_matmul']}", "",
             f"## Inference ({s['height']}x{s['width']}, native logits, median of {s['repeats']} after "
             f"{s['warmup']} warm-up)", "",
             "| model | batch | dtype | layout | execution | median ms / batch | images/s | peak MiB | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["inference"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['layout']} | {r['execution']} "
                         f"| {r['error']} | | | |")
            continue
        compile_s = f"{r['compile_s']:.0f}" if "compile_s" in r else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['layout']} | {r['execution']} "
                     f"| {r['median_ms']:.2f} | {r['images_per_s']:.1f} | {_mem(r['peak_mem_mb'])} | {compile_s} |")
    lines += ["", f"## Training step (batch {s['train_batch']} of {s['train_size'][0]}x{s['train_size'][1]}, "
                  f"AdamW, median of {s['train_repeats']} steps)", "",
              "| model | dtype | layout | median ms / step | it/s | images/s | peak MiB | 160k iterations (h) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in payload["training"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['layout']} | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['dtype']} | {r['layout']} | {r['median_ms']:.1f} | {r['its_per_s']:.2f} "
                     f"| {r['images_per_s']:.1f} | {_mem(r['peak_mem_mb'])} | {r['hours_for_160k']:.1f} |")
    lines += ["", "The 160k-iteration estimate is the step time alone (one GPU; no data loading, evaluation or "
                  "checkpoints)."]
    return "\n".join(lines) + "\n"


def device_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    total_memory_gb=round(props.total_memory / 2 ** 30, 1))
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()}, dry run)")
    return info


def _write_text(path: str, text: str) -> None:
    """Through the package's atomic writer (a complete file or none, the usual permissions)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 16 64 (dry run 2)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile (default: on; off in a dry run)")
    parser.add_argument("--compile-batches", type=int, nargs="+", default=None,
                        help="batches compiled (default: the largest of --batches)")
    parser.add_argument("--compile-dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="dtypes compiled (default: --dtypes)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="inference input (default 512 512; dry run 32 32)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=None, help="default 5 (dry run 0: the timed call is the first)")
    parser.add_argument("--repeats", type=int, default=None, help="default 20 (dry run 1)")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the AMP training step (default on)")
    parser.add_argument("--train-batch", type=int, default=None, help="default 16 (dry run 2)")
    parser.add_argument("--train-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 512 512 (dry run 32 32)")
    parser.add_argument("--train-dtypes", nargs="+", choices=["fp16", "bf16"], default=["bf16", "fp16"])
    parser.add_argument("--train-layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--train-warmup", type=int, default=None, help="default 3 (dry run 0)")
    parser.add_argument("--train-repeats", type=int, default=None, help="default 10 (dry run 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run everything on the CPU with tiny sizes and one iteration (to test the script)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None)
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.batches = args.batches or ([2] if dry else [1, 16, 64])
    args.height, args.width = args.size or ((32, 32) if dry else (512, 512))
    args.warmup = args.warmup if args.warmup is not None else (0 if dry else 5)
    args.repeats = args.repeats if args.repeats is not None else (1 if dry else 20)
    args.train_batch = args.train_batch or (2 if dry else 16)
    args.train_size = tuple(args.train_size or ((32, 32) if dry else (512, 512)))
    args.train_warmup = args.train_warmup if args.train_warmup is not None else (0 if dry else 3)
    args.train_repeats = args.train_repeats if args.train_repeats is not None else (1 if dry else 10)
    if args.compile is None:
        args.compile = not dry  # inductor on the CPU needs a C++ compiler and minutes per graph
    args.executions = ["eager"] + (["compile"] if args.compile else [])
    args.compile_batches = args.compile_batches or [max(args.batches)]
    args.compile_dtypes = args.compile_dtypes or list(args.dtypes)
    if min(args.batches + args.compile_batches + [args.train_batch, args.repeats, args.train_repeats]) < 1:
        parser.error("batches and repeats must be >= 1")
    if min(args.warmup, args.train_warmup) < 0:
        parser.error("warm-up counts must be >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is "
              "False); run it with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = device_info(device)
    slug = re.sub(r"[^a-z0-9]+", "_", info["name"].lower()).strip("_")
    out_dir = Path(tempfile.gettempdir()) / "csap_zoo_gpu" if args.dry_run else RESULTS
    stem = f"gpu_{slug}" + ("_dry_run" if args.dry_run else "")
    args.json = args.json or str(out_dir / f"{stem}.json")
    args.md = args.md or str(out_dir / f"{stem}.md")
    print(f"device: {info['name']}", file=sys.stderr, flush=True)
    inference, training = [], []
    for name in args.models:
        inference.extend(bench_inference(name, args, device))
    if args.train:
        for name in args.models:
            training.extend(bench_training(name, args, device))
    settings = {key: getattr(args, key) for key in (
        "models", "batches", "dtypes", "layouts", "executions", "compile_batches", "compile_dtypes", "height",
        "width", "classes", "warmup", "repeats", "train_batch", "train_size", "train_dtypes", "train_layouts",
        "train_warmup", "train_repeats")}
    settings["train_size"] = list(settings["train_size"])
    payload = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "dry_run": args.dry_run,
               "device": info, "settings": settings, "inference": inference, "training": training,
               "recipe_iterations": RECIPE_ITERS}
    markdown = format_markdown(payload)
    print(markdown)
    _write_text(args.json, json.dumps(payload, indent=2) + "\n")
    _write_text(args.md, markdown)
    print(f"wrote {args.json}, {args.md}", file=sys.stderr)
    failed = [r for r in inference + training if "error" in r]
    if failed and args.dry_run:
        return 1  # a dry run exists to show the script works: any failure is one
    return 0


if __name__ == "__main__":
    sys.exit(main())
