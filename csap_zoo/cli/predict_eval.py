"""``csap-zoo predict`` and ``csap-zoo eval``: the inference options they share, their parsers and their runs."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..constants import BACKENDS, DATASET_LAYOUTS
from ..errors import UsageError
from .common import is_saved_model, load_model

_DATASET_CHOICES = DATASET_LAYOUTS


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


def _segmenter(args: argparse.Namespace, model, dataset: Optional[str], info=None):
    """The Segmenter that predict and eval run (the model's test size unless a dataset or --resize says else)."""
    from ..inference import Segmenter

    return Segmenter(model, _inference_config(args, dataset), device=args.device, amp=args.amp, dataset_info=info,
                     backend=getattr(args, "backend", "torch"))


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import predict_paths

    seg = _segmenter(args, load_model(args), None)
    summary = predict_paths(seg, args.inputs, args.out, alpha=args.alpha, legend=not args.no_legend,
                            progress=not args.no_progress)
    print(f"wrote {len(summary.written)} label map(s) to {args.out}/labels and overlay(s) to {args.out}/overlays"
          + (f"; skipped {len(summary.skipped)} file(s)" if summary.skipped else ""))
    if summary.failed:
        total = len(summary.written) + len(summary.failed)
        print(f"error: {len(summary.failed)} of {total} image(s) could not be read (listed above); their outputs "
              f"were not written", file=sys.stderr)
        return 1
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..data import folder_dataset_info, get_dataset_info, open_dataset
    from ..evaluation import evaluate

    info = None
    num_classes = None
    if args.dataset == "folder":
        if args.classes or os.path.isfile(os.path.join(args.data, "classes.txt")):
            info = folder_dataset_info(args.data, args.classes, name="folder")
            num_classes = info.num_classes
    elif not is_saved_model(args.model) and "." not in args.model:
        num_classes = get_dataset_info(args.dataset).num_classes
    # a wrong --data fails here, before weights are loaded (or downloaded); only a folder dataset without a classes
    # file waits for the model, whose classes it takes
    dataset = None
    if args.dataset != "folder" or info is not None:
        dataset = open_dataset(args.dataset, args.data, split=args.split, info=info)
    elif not os.path.isdir(args.data):
        raise UsageError(f"--data {args.data}: no such folder (a folder dataset: <root>/images and <root>/masks, "
                         "or <root>/<split>/...)")
    # loaded weights keep their own classes: evaluating a re-initialised classifier would be meaningless, so a
    # class-count mismatch with the dataset is reported by evaluate() instead
    model = load_model(args, None if (args.checkpoint or args.pretrained) else num_classes)
    seg = _segmenter(args, model, None if args.dataset == "folder" else args.dataset, info)
    if dataset is None:
        dataset = open_dataset(args.dataset, args.data, split=args.split, info=seg.dataset_info)
    print(f"evaluating {args.model} on {dataset!r}", file=sys.stderr)
    result = evaluate(seg, dataset, limit=args.limit, progress=not args.no_progress)
    print(result.table())
    print(result.summary())
    return 0


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
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype (fp16: CUDA only)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="where the network runs: torch (default) or openvino (CPU; needs the openvino package; "
                             "converted once per input size and cached under $CSAP_ZOO_CACHE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
                               "or a folder with images/ and masks/")
    evaluate.add_argument("--dataset", required=True, choices=_DATASET_CHOICES, help="dataset layout")
    evaluate.add_argument("--split", default=None, help="split to evaluate (default: the validation split; for "
                                                        "folder: DIR/images if it exists, else DIR/val)")
    evaluate.add_argument("--classes", metavar="FILE", help="folder datasets: one class per line, `name` or "
                                                            "`name R G B`, `#` comments (default: DIR/classes.txt, "
                                                            "else the model's classes)")
    evaluate.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    _add_inference_args(evaluate)
    evaluate.set_defaults(func=_cmd_eval)
