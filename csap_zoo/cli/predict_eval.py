"""``csap-zoo predict`` and ``csap-zoo eval``: the inference options they share, their parsers and their runs."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from ..constants import BACKENDS, DATASET_LAYOUTS, PRECISIONS
from ..distributed import DEFAULT_COLLECTIVE_TIMEOUT_S
from ..errors import DistributedError, UsageError
from .common import is_saved_model, load_model

if TYPE_CHECKING:
    from ..distributed import DistEnv

_DATASET_CHOICES = DATASET_LAYOUTS
_OWN_CLASS_LAYOUTS = ("folder", "hf")  # layouts whose classes are a classes file's or the model's
CALIBRATION_IMAGES = 32  # int8 calibration images taken from --calibration (or predict's inputs)


def _inference_config(args: argparse.Namespace, dataset: Optional[str]):
    """The options as an InferenceConfig: the dataset's protocol, else Segmenter's default (``resize="auto"``: the
    checkpoint's own test size, the same as ``Segmenter(model)``), with --mode/--crop-size/--stride/--resize/
    --max-pixels/--tta on top (``--resize 0``: native size)."""
    from ..inference import InferenceConfig

    overrides = {}
    if args.mode is not None:
        overrides["mode"] = args.mode
    if args.crop_size is not None:
        overrides["crop_size"] = tuple(args.crop_size) * (2 // len(args.crop_size))
    if args.stride is not None:
        overrides["stride"] = tuple(args.stride) * (2 // len(args.stride))
    if args.resize is not None:
        overrides["resize"] = None if args.resize == [0] else tuple(args.resize)
    if getattr(args, "max_pixels", None) is not None:
        overrides["max_pixels"] = args.max_pixels
    return InferenceConfig.for_dataset(dataset, tta=args.tta, **overrides)


def calibration_images(specs) -> list:
    """Up to ``CALIBRATION_IMAGES`` image files named by files, folders or globs, spread evenly over them."""
    from ..predict import resolve_inputs

    paths = resolve_inputs(specs).paths
    if len(paths) > CALIBRATION_IMAGES:
        step = len(paths) / CALIBRATION_IMAGES
        paths = [paths[int(i * step)] for i in range(CALIBRATION_IMAGES)]
    return paths


def _segmenter(args: argparse.Namespace, model, dataset: Optional[str], info=None, default_calibration=None):
    """The Segmenter that predict and eval run (the model's test size unless a dataset or --resize says else)."""
    from ..inference import Segmenter

    calibration = None
    if args.precision == "int8":
        specs = args.calibration or default_calibration
        if not specs:
            raise UsageError("--precision int8 needs --calibration IMAGES (16-32 images like the ones you will "
                             "segment: files, folders or globs)")
        calibration = calibration_images(specs)
    elif args.calibration:
        raise UsageError("--calibration is used by --precision int8 only")
    return Segmenter(model, _inference_config(args, dataset), device=args.device, precision=args.precision,
                     dataset_info=info, backend=args.backend, calibration=calibration)


def _in_process_group(args: argparse.Namespace, run: Callable[["DistEnv"], int]) -> int:
    """Run a command in torchrun's process group (one process without torchrun): NCCL on GPUs, gloo on the CPU,
    every collective bounded by --dist-timeout. A failure that every process knows of is printed by rank 0 alone."""
    from ..distributed import end_distributed, init_distributed

    env = init_distributed(args.device or "cpu", timeout_s=args.dist_timeout)
    if env.distributed:
        args.device = str(env.device)  # a bare "cuda": this process's GPU
    try:
        return run(env)
    except DistributedError as err:
        if err.shared and not env.is_main:
            return 1
        raise
    finally:
        end_distributed(env)


def _cmd_predict(args: argparse.Namespace) -> int:
    return _in_process_group(args, lambda env: _predict(args, env))


def _predict(args: argparse.Namespace, env: "DistEnv") -> int:
    from ..predict import predict_paths

    seg = _segmenter(args, load_model(args), None, default_calibration=args.inputs)
    summary = predict_paths(seg, args.inputs, args.out, alpha=args.alpha, legend=not args.no_legend,
                            progress=not args.no_progress, skip_existing=not args.overwrite, env=env)
    if env.is_main:
        print(f"wrote {len(summary.written)} label map(s) to {args.out}/labels and overlay(s) to {args.out}/overlays"
              + (f"; kept {len(summary.existing)} already there (--overwrite redoes them)" if summary.existing else "")
              + (f"; skipped {len(summary.skipped)} file(s)" if summary.skipped else ""))
    if summary.failed:
        total = len(summary.written) + len(summary.failed)
        if env.is_main:
            print(f"error: {len(summary.failed)} of {total} image(s) could not be read (listed above); their "
                  f"outputs were not written", file=sys.stderr)
        return 1
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    return _in_process_group(args, lambda env: _eval(args, env))


def _eval(args: argparse.Namespace, env: "DistEnv") -> int:
    from ..data import folder_dataset_info, get_dataset_info
    from ..evaluation import evaluate

    info = None
    num_classes = None
    if args.dataset in _OWN_CLASS_LAYOUTS:
        if args.classes or (args.dataset == "folder" and os.path.isfile(os.path.join(args.data, "classes.txt"))):
            info = folder_dataset_info(args.data if args.dataset == "folder" else None, args.classes,
                                       name=args.dataset)
            num_classes = info.num_classes
    elif not is_saved_model(args.model) and "." not in args.model:
        num_classes = get_dataset_info(args.dataset).num_classes
    # a wrong --data fails here, before weights are loaded (or downloaded); only a folder or hf dataset without a
    # classes file waits for the model, whose classes it takes (an hf dataset's split and columns are checked first)
    dataset = hf_table = None
    if args.dataset not in _OWN_CLASS_LAYOUTS or info is not None:
        dataset = _open_eval_dataset(args, info)
    elif args.dataset == "hf":  # the split and its columns are checked before the model is loaded
        hf_table = _load_hf_table(args)
    elif not os.path.isdir(args.data):
        raise UsageError(f"--data {args.data}: no such folder (a folder dataset: <root>/images and <root>/masks, "
                         "or <root>/<split>/...)")
    # loaded weights keep their own classes: evaluating a re-initialised classifier would be meaningless, so a
    # class-count mismatch with the dataset is reported by evaluate() instead
    model = load_model(args, None if (args.checkpoint or args.pretrained) else num_classes)
    seg = _segmenter(args, model, None if args.dataset in _OWN_CLASS_LAYOUTS else args.dataset, info)
    if dataset is None:
        dataset = _open_eval_dataset(args, seg.dataset_info, hf_table)
    if env.is_main:
        print(f"evaluating {args.model} on {dataset!r}" + (f" with {env.world_size} processes" if env.distributed
                                                            else ""), file=sys.stderr)
    result = evaluate(seg, dataset, limit=args.limit, progress=not args.no_progress, env=env)
    if not env.is_main:
        return 0
    print(result.table())
    print(result.summary())
    if args.json:
        from ..evaluation import write_report

        images = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        write_report(args.json, result, images, _eval_protocol(args, seg))
    return 0


def _load_hf_table(args: argparse.Namespace):
    from ..data.hf_datasets import load_hf_table

    return load_hf_table(args.data, args.split, image_column=args.image_column, mask_column=args.mask_column)


def _open_eval_dataset(args: argparse.Namespace, info, hf_table=None):
    """The split eval reads: a Hugging Face dataset (csap_zoo.data.hf_datasets; ``hf_table`` when already
    loaded) or a folder layout."""
    if args.dataset == "hf":
        return (hf_table or _load_hf_table(args)).reader(info, args.reduce_zero_label)
    if args.reduce_zero_label and args.dataset not in _OWN_CLASS_LAYOUTS:
        raise UsageError(f"--reduce-zero-label is for folder and hf datasets; the {args.dataset} reader applies its "
                         f"layout's own label convention")
    from ..data import open_dataset

    return open_dataset(args.dataset, args.data, split=args.split, info=info,
                        reduce_zero_label=args.reduce_zero_label)


def _eval_protocol(args: argparse.Namespace, seg) -> Dict[str, Any]:
    """How ``eval`` ran, for --json: what was evaluated and the Segmenter's resolved settings (not the number of
    processes: the result does not depend on it)."""
    config = seg.config
    protocol: Dict[str, Any] = {
        "model": args.model, "checkpoint": args.checkpoint, "pretrained": bool(args.pretrained),
        "dataset": args.dataset, "data": args.data, "split": args.split, "limit": args.limit,
        "mode": config.mode, "resize": None if config.resize is None else list(config.resize),
        "crop_size": list(config.crop_size), "stride": list(config.stride), "ratios": list(config.ratios),
        "flip": bool(config.flip),
    }
    if args.reduce_zero_label:
        protocol["reduce_zero_label"] = True
    if args.dataset == "hf":
        protocol.update(image_column=args.image_column, mask_column=args.mask_column)
    for option in ("precision", "amp", "backend"):  # how the network ran, where this version has the option
        if hasattr(args, option):
            protocol[option] = getattr(args, option)
    return protocol


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="what from_pretrained takes: a manifest name (segnext_tiny.ade20k), an architecture "
                             "(csap_tiny), a save_pretrained folder, or hf-hub:org/repo")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="load the named checkpoint from the weights manifest (hash-checked, cached)")
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="weights file (.safetensors / .pth, loaded strictly) or a save_pretrained folder")
    parser.add_argument("--mode", choices=("whole", "slide"), help="whole image or sliding windows (default: "
                                                                   "whole, or the dataset's standard setting)")
    parser.add_argument("--crop-size", type=_non_negative_int, nargs="+", metavar="N", help="slide window: N or H W")
    parser.add_argument("--stride", type=_non_negative_int, nargs="+", metavar="N", help="slide stride: N or H W")
    parser.add_argument("--resize", type=_non_negative_int, nargs="+", metavar="N",
                        help="keep-ratio resize into LONG SHORT (e.g. 2048 512) before inference; 0 = native size")
    parser.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=None, metavar="N",
                        help="refuse images with more pixels before decoding them (default: $CSAP_ZOO_MAX_PIXELS or "
                             "2**28; 0 = no limit)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default), bf16 (CPUs with AVX-512 BF16 or AMX, and GPUs), fp16 (CUDA) or int8 "
                             "(OpenVINO, quantized on --calibration images)")
    parser.add_argument("--calibration", nargs="+", metavar="IMAGES", default=None,
                        help=f"int8: images to calibrate on (files, folders, globs; up to {CALIBRATION_IMAGES}, "
                             "spread over them; predict defaults to its inputs)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="where the network runs: auto (default: openvino on the CPU, torch elsewhere), torch, or "
                             "openvino (converted once per model and cached under $CSAP_ZOO_CACHE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dist-timeout", type=_positive_float, default=DEFAULT_COLLECTIVE_TIMEOUT_S,
                        metavar="SECONDS",
                        help="under torchrun: how long a process waits for the others at the end of each image "
                             "before a dead or stopped process ends the job with an error (default "
                             f"{DEFAULT_COLLECTIVE_TIMEOUT_S:g})")


def add_hf_column_args(parser: argparse.ArgumentParser, with_defaults: bool = True) -> None:
    """--image-column and --mask-column: the Image columns of a --dataset hf table (eval; train, where None leaves
    the config's value, ``with_defaults=False``)."""
    from ..constants import HF_IMAGE_COLUMN, HF_MASK_COLUMN

    parser.add_argument("--image-column", default=HF_IMAGE_COLUMN if with_defaults else None, metavar="NAME",
                        help=f"hf datasets: the column of images (default {HF_IMAGE_COLUMN})")
    parser.add_argument("--mask-column", default=HF_MASK_COLUMN if with_defaults else None, metavar="NAME",
                        help=f"hf datasets: the column of masks (default {HF_MASK_COLUMN}, as in scene_parse_150)")


def check_pairs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a --crop-size, --stride or --resize of the wrong length through the parser's usage error."""
    for name in ("crop_size", "stride"):
        value = getattr(args, name, None)
        if value is not None and (len(value) not in (1, 2) or 0 in value):
            parser.error(f"--{name.replace('_', '-')} takes one or two positive integers")
    resize = getattr(args, "resize", None)
    if resize is not None and resize != [0] and (len(resize) != 2 or 0 in resize):
        parser.error("--resize takes LONG SHORT (two positive integers), or 0 for native size")


def add_predict_eval_commands(sub) -> None:
    """Add ``predict`` and ``eval`` to the subcommands."""
    predict = sub.add_parser(
        "predict", help="segment images and write label maps and overlays",
        description="Segment images and write OUT/labels/<name>.png (class indices) and OUT/overlays/<name>.png "
                    "(colour overlay with a legend). In a folder or glob, files that are not images and a folder's "
                    "hidden files are skipped, and image files that cannot be read fail; one warning lists each "
                    "group. Exit status: 0 when every image was written, 1 when any image failed (the others are "
                    "still written) or on an error, 2 for an invalid option. A single named file that cannot be "
                    "read is an error.",
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob pattern (quote it)")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_inference_args(predict)
    predict.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    predict.add_argument("--no-legend", action="store_true", help="overlays without the class legend")
    predict.add_argument("--overwrite", action="store_true",
                         help="predict every input again; by default an input whose label map and overlay are both "
                              "in OUT already is left alone, so a rerun of a stopped job does only what is missing")
    _add_distributed_args(predict)
    predict.set_defaults(func=_cmd_predict)

    evaluate = sub.add_parser(
        "eval", help="evaluate a model on a dataset (aAcc, mIoU, mAcc, per-class IoU/Acc)",
        description="Evaluate on a validation split with MMSegmentation's conventions (areas accumulated over the "
                    "dataset, ignore 255). ade20k/cocostuff resize to (2048, 512) and run whole; cityscapes runs "
                    "1024x1024 windows with stride 768; the options below override that.",
    )
    evaluate.add_argument("--data", "--data-root", dest="data", required=True, metavar="DIR",
                          help="dataset root: ADEChallengeData2016 (or its parent); the Cityscapes root with "
                               "leftImg8bit/ and gtFine/; the COCO-Stuff root with images/ and annotations/; "
                               "or, for folder, the training layout SPLIT/images, SPLIT/masks (+ classes.txt), "
                               "or a folder with images/ and masks/; for hf, a Hub dataset id, a save_to_disk "
                               "folder or a folder of parquet files (Hub layout)")
    evaluate.add_argument("--dataset", required=True, choices=_DATASET_CHOICES, help="dataset layout")
    evaluate.add_argument("--split", default=None, help="split to evaluate (default: the validation split; for "
                                                        "folder: DIR/images if it exists, else DIR/val; for hf: "
                                                        "validation, else val, else the only split)")
    evaluate.add_argument("--classes", metavar="FILE", help="folder and hf datasets: one class per line, `name` or "
                                                            "`name R G B`, `#` comments (default: DIR/classes.txt "
                                                            "for folder, else the model's classes)")
    add_hf_column_args(evaluate)
    evaluate.add_argument("--reduce-zero-label", action="store_true",
                          help="folder and hf datasets: stored 0 is 'other' (ignored) and 1..K are the classes, as in "
                               "ADE20K and scene_parse_150 (default: the stored values are the labels)")
    evaluate.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    evaluate.add_argument("--json", metavar="FILE", default=None,
                          help="also write the metrics (percent), per-class IoU/Acc, the image count, the protocol "
                               "and the confusion matrix as JSON (atomically)")
    _add_inference_args(evaluate)
    _add_distributed_args(evaluate)
    evaluate.set_defaults(func=_cmd_eval)
