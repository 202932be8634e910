"""``csap-zoo train``: a preset or config file, command-line overrides on top, then csap_zoo.training.train."""
from __future__ import annotations

import argparse
import sys
from typing import List

from ..constants import DATASET_LAYOUTS
from .predict_eval import add_hf_column_args

# the training presets (csap_zoo.training.config.PRESETS; a test checks that the two agree)
PRESET_NAMES = ("ade20k", "cityscapes", "cocostuff", "shapes-demo")


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
    from ..training import get_preset, load_config, train

    if args.config and args.preset:
        raise ValueError("give --config or --preset, not both")
    config = load_config(args.config) if args.config else get_preset(args.preset or "shapes-demo")
    overrides = {key: getattr(args, key) for key in ("dataset", "data_root", "train_split", "val_split",
                                                      "image_column", "mask_column", "out_dir", "model", "init",
                                                      "max_iters", "batch_size", "resume", "device", "num_workers",
                                                      "seed")
                 if getattr(args, key) is not None}
    if args.no_progress:
        overrides["progress"] = False
    overrides.update(_parse_set(args.set))
    config = config.replace(**overrides) if overrides else config
    if args.generate_shapes:
        from ..data.synthetic import generate_shapes_dataset

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


def add_train_command(sub) -> None:
    """Add ``train`` to the subcommands."""
    train = sub.add_parser(
        "train", help="train or fine-tune a model (the paper's recipe; DDP under torchrun)",
        description="Train from a preset or a YAML/JSON config; options below and --set KEY=VALUE override it. "
                    "Run `torchrun --nproc_per_node=N -m csap_zoo.cli train ...` for multi-GPU DDP. Writes "
                    "OUT/config.yaml, OUT/log.jsonl, OUT/checkpoints/, OUT/best/ and OUT/final/ (save_pretrained).",
    )
    train.add_argument("--config", metavar="FILE", help="YAML/JSON config (a 'preset: NAME' key fills in the rest)")
    train.add_argument("--preset", choices=PRESET_NAMES, help="start from a preset (default: shapes-demo)")
    train.add_argument("--dataset", choices=DATASET_LAYOUTS, help="dataset layout (default: the preset's)")
    train.add_argument("--data-root", "--data", dest="data_root", metavar="DIR",
                       help="dataset root (for --dataset hf: a Hub dataset id, a save_to_disk folder or a folder of "
                            "parquet files)")
    train.add_argument("--split", dest="train_split", metavar="NAME", help="training split (default: the "
                                                                           "dataset's: train, training, ...)")
    train.add_argument("--val-split", dest="val_split", metavar="NAME",
                       help="validation split (default: the dataset's; hf: validation or val if there is one)")
    add_hf_column_args(train, with_defaults=False)
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
