"""The ``csap-zoo`` command line: parses arguments, calls the public API, prints.

The parser is built from the standard library and the package's light modules only (constants, errors, version):
``csap-zoo --help`` and ``csap-zoo COMMAND --help`` never import torch, timm or torchvision. Each command imports
what it runs when it runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from .constants import BACKENDS, DATASET_LAYOUTS
from .errors import HUB_LOGIN_ADVICE, CsapZooError, UsageError
from .version import __version__

# the training presets (csap_zoo.training.config.PRESETS; a test checks that the two agree)
PRESET_NAMES = ("ade20k", "cityscapes", "cocostuff", "shapes-demo")


def _cmd_models(args: argparse.Namespace) -> int:
    from .hub.catalog import model_catalog

    rows = model_catalog(args.pattern)
    if not rows:
        print(f"nothing matches {args.pattern!r}", file=sys.stderr)
        return 1
    table = [("name", "backbone", "dataset", "classes", "params (M)", "GMACs@512", "paper mIoU", "weights")]
    for r in rows:
        table.append((r.name, r.backbone, r.dataset, str(r.num_classes), f"{r.params_m:.2f}", f"{r.gmacs_512:.2f}",
                      "-" if r.paper_miou is None else f"{r.paper_miou:.1f}", r.weights))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("\nGMACs: convolutions and matrix products at 512x512 (benchmarks/flops.py gives fvcore's full count).")
    if any(r.weights.endswith("/prefix") for r in rows):
        print("published/prefix: the manifest knows only a sha256 prefix (from the file name); the full sha256 is "
              "pinned at the first download and checked on every later load.")
    return 0


# ---------------------------------------------------------------------- predict / eval
_DATASET_CHOICES = DATASET_LAYOUTS


def _is_saved_model(name: str) -> bool:
    """Whether a --model value names a save_pretrained folder or a Hub repository (it carries its weights).
    A weights file is refused with what to pass instead."""
    if os.path.isfile(name):
        raise UsageError(f"--model {name} is a file; give the architecture or manifest name with --model and the "
                         f"file with --checkpoint {name}")
    return name.startswith("hf-hub:") or os.path.isdir(name)


def _saved_model(name: str, weights_option: Optional[str] = None):
    """The model of a save_pretrained folder or an hf-hub: id, through csap_zoo.from_pretrained."""
    from . import from_pretrained

    if weights_option:
        raise UsageError(f"{name} carries its own weights; drop {weights_option} (it is for architecture and "
                         f"manifest names)")
    return from_pretrained(name)


def _load_model(args: argparse.Namespace, num_classes: Optional[int] = None):
    """The model named by --model (a manifest name, an architecture, a save_pretrained folder or an hf-hub: id),
    with weights from --checkpoint (file or saved folder) or --pretrained."""
    from . import create_model

    pretrained = args.checkpoint or args.pretrained
    if _is_saved_model(args.model):
        return _saved_model(args.model, "--checkpoint" if args.checkpoint else "--pretrained" if pretrained else None)
    if not pretrained:
        print(f"warning: {args.model} has random weights (pass --pretrained or --checkpoint PATH)", file=sys.stderr)
    return create_model(args.model, pretrained=pretrained, num_classes=num_classes)


def _check_device(device: Optional[str]) -> None:
    """Refuse a --device this machine does not have, before any model is built."""
    if device is None or device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                             f"False: no GPU or driver, or a CPU-only torch build); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def _inference_config(args: argparse.Namespace, dataset: Optional[str]):
    """The options as an InferenceConfig: the dataset's protocol, else Segmenter's default (``resize="auto"``: the
    checkpoint's own test size, the same as ``Segmenter(model)``), with --mode/--crop-size/--stride/--resize/
    --max-pixels/--tta on top (``--resize 0``: native size)."""
    from .inference import InferenceConfig

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
    from .inference import Segmenter

    return Segmenter(model, _inference_config(args, dataset), device=args.device, amp=args.amp, dataset_info=info,
                     backend=getattr(args, "backend", "torch"))


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_paths

    seg = _segmenter(args, _load_model(args), None)
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
    from .data import folder_dataset_info, get_dataset_info, open_dataset
    from .evaluation import evaluate

    info = None
    num_classes = None
    if args.dataset == "folder":
        if args.classes or os.path.isfile(os.path.join(args.data, "classes.txt")):
            info = folder_dataset_info(args.data, args.classes, name="folder")
            num_classes = info.num_classes
    elif not _is_saved_model(args.model) and "." not in args.model:
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
    model = _load_model(args, None if (args.checkpoint or args.pretrained) else num_classes)
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


def _check_pairs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("crop_size", "stride"):
        value = getattr(args, name, None)
        if value is not None and (len(value) not in (1, 2) or 0 in value):
            parser.error(f"--{name.replace('_', '-')} takes one or two positive integers")
    resize = getattr(args, "resize", None)
    if resize is not None and resize != [0] and (len(resize) != 2 or 0 in resize):
        parser.error("--resize takes LONG SHORT (two positive integers), or 0 for native size")


def _add_predict_eval(sub) -> None:
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


def _cmd_download(args: argparse.Namespace) -> int:
    """Fetch a manifest checkpoint into the cache, or (--from-file) verify a copy downloaded by hand and place it
    there; prints the cached file's path."""
    from .hub import default_manifest
    from .hub.download import fetch_checkpoint, place_from_file

    checkpoint = default_manifest().get(args.name)
    if args.from_file:
        path = place_from_file(checkpoint, args.from_file, cache_dir=args.cache_dir)
        print(f"{args.from_file} matches the manifest's sha256 for {args.name}; placed in the cache", file=sys.stderr)
    else:
        path = fetch_checkpoint(checkpoint, cache_dir=args.cache_dir, progress=args.progress)
    print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Convert a foreign checkpoint into a model folder (csap_zoo.hub.convert.convert_checkpoint)."""
    from .hub.convert import convert_checkpoint

    print(convert_checkpoint(args.source, args.destination, args.name, args.format,
                             backbone_only=args.backbone_only))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from .hub.publish import publish_entry

    entry = publish_entry(args.model_dir, args.name, hf_repo=args.hf_repo, revision=args.revision, url=args.url,
                          manifest_path=args.manifest)
    print(f"{entry.name}: sha256 {entry.sha256}, {entry.size_bytes} bytes, source {entry.source.describe()}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from . import from_pretrained, push_to_hub
    from .models.serialization import check_hub_upload

    if not os.path.isdir(args.model_dir):
        raise FileNotFoundError(f"{args.model_dir} is not a folder (push takes a save_pretrained folder)")
    model = from_pretrained(args.model_dir)  # validated before anything is sent
    check_hub_upload()  # offline, no token, unreachable: one line at once
    sha = push_to_hub(model, args.repo_id, private=args.private)
    print(f"pushed {args.model_dir} to hf-hub:{args.repo_id} at revision {sha}")
    print(f"next: csap-zoo publish {args.model_dir} --name NAME --hf-repo {args.repo_id} --revision {sha}")
    return 0


def _add_hub_commands(sub) -> None:
    download = sub.add_parser(
        "download", help="fetch a manifest checkpoint into the cache (for offline use)",
        description="Download and verify a checkpoint listed in the weights manifest, or, with --from-file, check "
                    "a copy downloaded by hand against the manifest's sha256 and place it in the cache (where "
                    "create_model(NAME, pretrained=True) reads it, offline too). Prints the cached file's path.")
    download.add_argument("name", help="checkpoint name, e.g. segnext_tiny.ade20k")
    download.add_argument("--cache-dir", default=None, help="cache folder (default: the Hugging Face / csap-zoo cache)")
    download.add_argument("--from-file", default=None, metavar="FILE",
                          help="a copy of the checkpoint downloaded by hand: verified, then copied into the cache "
                               "(a wrong file changes nothing)")
    bar = download.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                     help="progress bar for URL downloads even when stderr is not a terminal")
    bar.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                     help="no progress bar (default: one on stderr when it is a terminal)")
    download.set_defaults(func=_cmd_download)

    convert = sub.add_parser(
        "convert", help="convert an official MSCAN / MMSegmentation SegNeXt checkpoint",
        description="Convert a foreign checkpoint into a csap-zoo model folder (config.json + model.safetensors). "
                    "Files are read with safetensors or torch.load(weights_only=True); the layout is detected "
                    "from the keys. Every parameter of the folder comes from the file, or nothing is written: a "
                    "checkpoint name (segnext_tiny.ade20k) needs a file with a decode head of its classes, unless "
                    "--backbone-only; a bare architecture (csap_tiny) also takes a backbone-only file (ImageNet "
                    "init), with a warning that the head is random.")
    convert.add_argument("source", help="checkpoint file (.pth / .safetensors)")
    convert.add_argument("destination", help="output model folder")
    convert.add_argument("--name", required=True, help="model name, e.g. segnext_tiny.ade20k or csap_tiny")
    convert.add_argument("--format", default=None, choices=("mscan-original", "mmseg-segnext", "csap-safetensors"),
                         help="layout of the source file, overriding the detection (it can never drop a decode "
                              "head the file has)")
    convert.add_argument("--backbone-only", action="store_true",
                         help="take only the file's backbone; the decode head stays randomly initialised (for "
                              "fine-tuning)")
    convert.set_defaults(func=_cmd_convert)

    publish = sub.add_parser(
        "publish", help="hash a saved model and write its weights-manifest entry",
        description="Compute the sha256 of a save_pretrained folder's weights and add or replace its entry in the "
                    "weights manifest, pointing at where it was uploaded.")
    publish.add_argument("model_dir", help="folder written by save_pretrained / push_to_hub")
    publish.add_argument("--name", required=True, help="manifest name, architecture.dataset (csap_tiny.ade20k)")
    publish.add_argument("--hf-repo", default=None, help="Hugging Face repo id the folder was pushed to")
    publish.add_argument("--revision", default=None, help="commit sha of that upload (pinned in the manifest)")
    publish.add_argument("--url", default=None, help="plain URL of the weights file, instead of --hf-repo")
    publish.add_argument("--manifest", default=None, help="manifest file to edit (default: the packaged one)")
    publish.set_defaults(func=_cmd_publish)

    push = sub.add_parser(
        "push", help="upload a save_pretrained folder to a Hugging Face Hub model repository",
        description="Validate a save_pretrained folder, upload it to a Hub model repository (created if needed) "
                    "and print the commit sha that `csap-zoo publish --revision` pins. Needs a token: "
                    + HUB_LOGIN_ADVICE + ".")
    push.add_argument("model_dir", help="folder written by save_pretrained")
    push.add_argument("repo_id", help="Hub repository, org/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.set_defaults(func=_cmd_push)


# ---------------------------------------------------------------------- train
def _parse_set(items: List[str]) -> dict:
    import yaml

    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        values[key.strip().replace("-", "_")] = yaml.safe_load(text) if text else None
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import get_preset, load_config, train

    if args.config and args.preset:
        raise ValueError("give --config or --preset, not both")
    config = load_config(args.config) if args.config else get_preset(args.preset or "shapes-demo")
    overrides = {key: getattr(args, key) for key in ("data_root", "out_dir", "model", "init", "max_iters",
                                                      "batch_size", "resume", "device", "num_workers", "seed")
                 if getattr(args, key) is not None}
    if args.no_progress:
        overrides["progress"] = False
    overrides.update(_parse_set(args.set))
    config = config.replace(**overrides) if overrides else config
    if args.generate_shapes:
        from .data.synthetic import generate_shapes_dataset

        if not config.data_root:
            raise ValueError("--generate-shapes needs a data_root to write to")
        print(f"generating the shapes dataset in {config.data_root}", file=sys.stderr)
        generate_shapes_dataset(config.data_root, num_train=args.generate_shapes[0],
                                num_val=args.generate_shapes[1], size=(128, 128), seed=0)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    result = train(config)
    if result.final_dir is not None:  # rank 0 under torchrun
        summary = "  ".join(f"{k} {100 * result.metrics[k]:.2f}" for k in ("mIoU", "aAcc", "mAcc")
                            if result.metrics.get(k) is not None)
        print(f"trained {result.iterations} iterations in {result.wall_time:.0f}s; {summary or 'no validation set'}")
        print(f"model: {result.final_dir}" + (f"  (best: {result.best_dir})" if result.best_dir else ""))
    return 0


def _add_train(sub) -> None:
    train = sub.add_parser(
        "train", help="train or fine-tune a model (the paper's recipe; DDP under torchrun)",
        description="Train from a preset or a YAML/JSON config; options below and --set KEY=VALUE override it. "
                    "Run `torchrun --nproc_per_node=N -m csap_zoo.cli train ...` for multi-GPU DDP. Writes "
                    "OUT/config.yaml, OUT/log.jsonl, OUT/checkpoints/, OUT/best/ and OUT/final/ (save_pretrained).",
    )
    train.add_argument("--config", metavar="FILE", help="YAML/JSON config (a 'preset: NAME' key fills in the rest)")
    train.add_argument("--preset", choices=PRESET_NAMES, help="start from a preset (default: shapes-demo)")
    train.add_argument("--data-root", dest="data_root", metavar="DIR", help="dataset root")
    train.add_argument("--out", dest="out_dir", metavar="DIR", help="output folder")
    train.add_argument("--model", help="architecture, e.g. csap_tiny")
    train.add_argument("--init", help="imagenet, scratch, a zoo checkpoint name, or a local checkpoint/folder")
    train.add_argument("--max-iters", dest="max_iters", type=int, metavar="N")
    train.add_argument("--batch-size", dest="batch_size", type=int, metavar="N", help="global batch size")
    train.add_argument("--resume", metavar="auto|PATH", help="resume: 'auto' (newest readable checkpoint in OUT), a checkpoint file, or a run / "
                       "checkpoints folder")
    train.add_argument("--device", help="auto, cpu, cuda")
    train.add_argument("--num-workers", dest="num_workers", type=int, metavar="N")
    train.add_argument("--seed", type=int)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field (YAML value), e.g. --set crop_size=[256,256]")
    train.add_argument("--generate-shapes", nargs=2, type=int, metavar=("TRAIN", "VAL"),
                       help="first write the generated shapes dataset (TRAIN/VAL images) into the data root")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------------- bench / export
def _cmd_export(args: argparse.Namespace) -> int:
    from .tools.export import export_model

    try:
        from . import create_model

        options = {} if args.num_classes is None else {"num_classes": args.num_classes}
        if _is_saved_model(args.model):
            if args.num_classes is not None:
                raise UsageError(f"{args.model} carries its own classes; drop --num-classes")
            model = _saved_model(args.model, "--checkpoint" if args.checkpoint else None).eval()
        else:
            model = create_model(args.model, pretrained=args.checkpoint or False, **options).eval()
        kwargs = dict(height=args.size[0], width=args.size[1], check=not args.no_check)
        if args.format == "onnx":
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
    from .tools.profiling import bench_model

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


def _add_bench_export(sub) -> None:
    export = sub.add_parser(
        "export", help="export a model to ONNX, torch.export (.pt2) or TorchScript",
        description="Export a model (random weights, or a safetensors state dict with --checkpoint) and check "
                    "the file against eager PyTorch at several sizes, including sizes not divisible by 32.")
    export.add_argument("model", help="model name (csap_tiny.ade20k), a save_pretrained folder or hf-hub:org/repo")
    export.add_argument("output", help="file to write (.onnx, .pt2, .pt)")
    export.add_argument("--format", choices=("onnx", "torch-export", "torchscript"), default="onnx")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csap-zoo", description="Efficient semantic segmentation with Cross-Stage Attention Propagation.",
    )
    parser.add_argument("--version", action="version", version=f"csap-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser("models", help="list architectures and checkpoints",
                            description="List the architectures and the manifest's segmentation checkpoints: "
                                        "backbone, dataset, params, GMACs, paper mIoU and weights status.")
    models.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter, e.g. 'csap_*' or '*.ade20k' (default: all)")
    models.set_defaults(func=_cmd_models)
    _add_predict_eval(sub)
    _add_hub_commands(sub)
    _add_bench_export(sub)
    _add_train(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: its message alone, without the code location or source line."""
    return f"warning: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Run one csap-zoo command; warnings print as ``warning: ...`` and known failures as one ``error: ...``
    line (exit status 1, or 2 for an option this machine cannot honour)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if args.command in ("predict", "eval"):
        _check_pairs(parser, args)
    original_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        if args.command in ("predict", "eval", "train"):
            _check_device(args.device)
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CsapZooError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = original_format


if __name__ == "__main__":
    sys.exit(main())
