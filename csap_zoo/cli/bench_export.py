"""``csap-zoo export`` and ``csap-zoo bench``: one model to a deployable file, one model's cost on the CPU."""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .common import is_saved_model, saved_model


def _cmd_export(args: argparse.Namespace) -> int:
    from ..tools.export import export_model

    try:
        from .. import create_model

        options = {} if args.num_classes is None else {"num_classes": args.num_classes}
        if is_saved_model(args.model):
            if args.num_classes is not None:
                raise UsageError(f"{args.model} carries its own classes; drop --num-classes")
            model = saved_model(args.model, "--checkpoint" if args.checkpoint else None).eval()
        else:
            model = create_model(args.model, pretrained=args.checkpoint or False, **options).eval()
        kwargs = dict(height=args.size[0], width=args.size[1], check=not args.no_check)
        if args.precision != "fp32" and args.format != "openvino":
            raise UsageError(f"--precision {args.precision} is exported as an OpenVINO IR (--format openvino); "
                             f"{args.format} files are fp32")
        if args.calibration and args.precision != "int8":
            raise UsageError("--calibration is used by --precision int8 only")
        if args.format == "openvino":
            kwargs.update(precision=args.precision)
            if args.precision == "int8":
                if not args.calibration:
                    raise UsageError("--precision int8 needs --calibration IMAGES (16-32 images like the ones the "
                                     "model will see: files, folders or globs)")
                from ..inference import Segmenter
                from .predict_eval import calibration_images

                kwargs["calibration"] = Segmenter(model, backend="torch").calibration_inputs(
                    calibration_images(args.calibration))
        elif args.format == "onnx":
            kwargs.update(opset=args.opset, dynamic=not args.static)
        elif args.format == "torch-export":
            kwargs.update(dynamic=not args.static)
        result = export_model(model, args.output, format=args.format, **kwargs)
    except UsageError:
        raise
    except (ValueError, FileNotFoundError, IsADirectoryError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dynamic = [axis for axis, on in result.dynamic.items() if on]
    print(f"wrote {result.path} ({result.format}; example input {list(result.example_shape)}; dynamic axes: "
          f"{', '.join(dynamic) or 'none'})")
    if result.max_abs_diff is not None:
        print(f"max abs difference to eager PyTorch: {result.max_abs_diff:.3g} over sizes "
              f"{', '.join(f'{h}x{w}' for h, w in result.checked_sizes)}")
    if result.notes:
        print(f"note: {result.notes}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..tools.profiling import bench_model

    if not args.no_memory:
        try:
            import psutil  # noqa: F401  (checked before minutes of timing, not after)
        except ImportError:
            print("error: bench measures memory with psutil, which is not installed: pip install "
                  "'csap-zoo[bench]' (or pass --no-memory)", file=sys.stderr)
            return 1
    try:
        result = bench_model(args.model, args.size[0], args.size[1], num_classes=args.num_classes,
                             num_threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                             channels_last=args.channels_last, onnx=args.onnx, memory=not args.no_memory,
                             optimized=not args.no_optimized)
    except (ValueError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = [("params (M)", f"{result.params_m:.2f}"),
            ("GMACs", "-" if result.gmacs is None else f"{result.gmacs:.2f}"),
            ("latency median / p90 (ms)", f"{result.latency.median_ms:.1f} / {result.latency.p90_ms:.1f}")]
    if result.channels_last:
        rows.append(("channels_last median / p90 (ms)",
                     f"{result.channels_last.median_ms:.1f} / {result.channels_last.p90_ms:.1f}"))
    if result.optimized:
        rows.append(("optimized median / p90 (ms)",
                     f"{result.optimized.median_ms:.1f} / {result.optimized.p90_ms:.1f}"))
    if result.onnxruntime:
        rows.append(("onnxruntime median / p90 (ms)",
                     f"{result.onnxruntime.median_ms:.1f} / {result.onnxruntime.p90_ms:.1f}"))
    if result.peak_mem_mb is not None:
        rows.append(("peak memory growth (MiB)", f"{result.peak_mem_mb:.0f}"))
    print(f"{args.model}: 1x3x{args.size[0]}x{args.size[1]}, {args.threads} threads, fp32 CPU, native logits, "
          f"{args.repeats} runs after {args.warmup} warm-up")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    return 0


def add_bench_export_commands(sub) -> None:
    """Add ``export`` and ``bench`` to the subcommands."""
    export = sub.add_parser(
        "export", help="export a model to ONNX, torch.export (.pt2), TorchScript or an OpenVINO IR (fp32 / int8)",
        description="Export a model (random weights, or a safetensors state dict with --checkpoint) and check "
                    "the file against eager PyTorch at several sizes, including sizes not divisible by 32.")
    export.add_argument("model", help="model name (csap_tiny.ade20k), a save_pretrained folder or hf-hub:org/repo")
    export.add_argument("output", help="file to write (.onnx, .pt2, .pt, or .xml for openvino: + .bin beside it)")
    export.add_argument("--format", choices=("onnx", "torch-export", "torchscript", "openvino"), default="onnx")
    export.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="fp32 (default, every format) or int8 (openvino: NNCF on --calibration images); bf16 "
                             "is chosen when an fp32 IR is compiled (INFERENCE_PRECISION_HINT=bf16)")
    export.add_argument("--calibration", nargs="+", metavar="IMAGES", default=None,
                        help="int8: images to calibrate on (files, folders, globs; up to 32, spread over them)")
    export.add_argument("--checkpoint", default=None,
                        help="weights: a checkpoint file or a saved model folder (default: random weights)")
    export.add_argument("--num-classes", type=int, default=None)
    export.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="example input size (default 512 512)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    export.add_argument("--static", action="store_true", help="fixed input shape instead of dynamic axes")
    export.add_argument("--no-check", action="store_true", help="skip the parity check against eager")
    export.set_defaults(func=_cmd_export)

    bench = sub.add_parser(
        "bench", help="params, GMACs, CPU latency and memory of one model",
        description="CPU benchmark of one model (random weights). benchmarks/latency.py compares many.")
    bench.add_argument("model", help="architecture name, or segformer_b0 (needs transformers)")
    bench.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    bench.add_argument("--num-classes", type=int, default=150)
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--channels-last", action="store_true", help="also time in channels_last layout")
    bench.add_argument("--onnx", action="store_true", help="also time in onnxruntime")
    bench.add_argument("--no-optimized", action="store_true",
                       help="skip the optimize_for_inference variant (what predict/eval run on the CPU)")
    bench.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    bench.set_defaults(func=_cmd_bench)
