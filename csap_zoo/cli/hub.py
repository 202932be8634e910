"""The commands around checkpoints: ``models`` (the catalog), ``download``, ``convert``, ``publish`` and ``push``."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import HUB_LOGIN_ADVICE


def _cmd_models(args: argparse.Namespace) -> int:
    from ..hub.catalog import model_catalog

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


def add_models_command(sub) -> None:
    """Add ``models`` to the subcommands."""
    models = sub.add_parser("models", help="list architectures and checkpoints",
                            description="List the architectures and the manifest's segmentation checkpoints: "
                                        "backbone, dataset, params, GMACs, paper mIoU and weights status.")
    models.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter, e.g. 'csap_*' or '*.ade20k' (default: all)")
    models.set_defaults(func=_cmd_models)


def _cmd_download(args: argparse.Namespace) -> int:
    """Fetch a manifest checkpoint into the cache, or (--from-file) verify a copy downloaded by hand and place it
    there; prints the cached file's path."""
    from ..hub import default_manifest
    from ..hub.download import fetch_checkpoint, place_from_file

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
    from ..hub.convert import convert_checkpoint

    print(convert_checkpoint(args.source, args.destination, args.name, args.format,
                             backbone_only=args.backbone_only))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from ..hub.publish import publish_entry

    entry = publish_entry(args.model_dir, args.name, hf_repo=args.hf_repo, revision=args.revision, url=args.url,
                          manifest_path=args.manifest)
    print(f"{entry.name}: sha256 {entry.sha256}, {entry.size_bytes} bytes, source {entry.source.describe()}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .. import from_pretrained
    from ..models.hub_transfer import check_hub_upload, push_to_hub

    if not os.path.isdir(args.model_dir):
        raise FileNotFoundError(f"{args.model_dir} is not a folder (push takes a save_pretrained folder)")
    model = from_pretrained(args.model_dir)  # validated before anything is sent
    check_hub_upload()  # offline, no token, unreachable: one line at once
    sha = push_to_hub(model, args.repo_id, private=args.private)
    print(f"pushed {args.model_dir} to hf-hub:{args.repo_id} at revision {sha}")
    print(f"next: csap-zoo publish {args.model_dir} --name NAME --hf-repo {args.repo_id} --revision {sha}")
    return 0


def add_hub_commands(sub) -> None:
    """Add ``download``, ``convert``, ``publish`` and ``push`` to the subcommands."""
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
