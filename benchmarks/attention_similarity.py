"""Propagated vs independently computed attention maps, per shallow stage of a CSAP model.

For each shallow decoder stage: cosine similarity and KL(independent || propagated) of the attention rows,
averaged over heads and query positions, then over images (see ``csap_zoo.tools.analysis`` for the method: stages
trained in independent mode are compared as they are; propagate-mode stages get least-squares-fitted q/k in the
model's independent-mode twin, fitted on separate images).

    python benchmarks/attention_similarity.py                                   # csap_tiny, 4 generated images
    python benchmarks/attention_similarity.py --model csap_tiny.ade20k --checkpoint ckpt.safetensors \\
        --images a.jpg b.jpg --fit-images c.jpg d.jpg --json out.json --png out.png
    python benchmarks/attention_similarity.py --attention independent           # the referee's question
    python benchmarks/attention_similarity.py --model csap_tiny.shapes --checkpoint csap_zoo/assets/demo \
        --scenes shapes --num-images 8                                          # the bundled trained demo

With random weights (no checkpoint) every map is close to uniform, so the numbers say little; use a trained one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

import torch

from csap_zoo.tools.analysis import (
    attention_similarity, format_similarity_table, plot_similarity, save_similarity_json,
)


def build(args: argparse.Namespace):
    import csap_zoo

    kwargs = {}
    if args.attention:
        kwargs["attention"] = args.attention if len(args.attention) > 1 else args.attention[0]
    if args.propagation:
        kwargs["propagation"] = args.propagation
    if args.checkpoint:
        kwargs["pretrained"] = args.checkpoint
    return csap_zoo.create_model(args.model, **kwargs)


def write_shapes_scenes(folder: Path, count: int, size: Tuple[int, int], first_seed: int) -> List[str]:
    """PNG files of generated shapes scenes (seeds first_seed...; the demo's training set used other seeds)."""
    from PIL import Image

    from csap_zoo.data.synthetic import render_shapes_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, _ = render_shapes_sample(first_seed + i, size=size, max_shapes=8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="csap_tiny", help="model name (default csap_tiny)")
    parser.add_argument("--checkpoint", default=None, help="weights: a local file or saved folder")
    parser.add_argument("--attention", nargs="+", choices=("propagate", "independent"), default=None,
                        help="attention mode(s) of the shallow stages (one for all, or one per stage)")
    parser.add_argument("--propagation", choices=("bilinear", "nearest"), default=None)
    parser.add_argument("--images", nargs="+", default=None, help="image files (default: generated scenes)")
    parser.add_argument("--fit-images", nargs="+", default=None,
                        help="images to fit propagate-mode stages' q/k on (default: other generated scenes)")
    parser.add_argument("--num-images", type=int, default=4, help="generated images (each for eval and fit)")
    parser.add_argument("--scenes", choices=("smooth", "shapes"), default="smooth",
                        help="generated images: smooth gradients with flat regions (default), or scenes of the "
                             "shapes dataset the bundled demo model was trained on (csap_zoo.data.synthetic)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="size of generated images, and the resize of image files")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the report to this JSON file")
    parser.add_argument("--png", default=None, help="write a plot to this PNG file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build(args)
    with tempfile.TemporaryDirectory() as tmp:
        images, fit_images = args.images, args.fit_images
        if args.scenes == "shapes":
            images = images or write_shapes_scenes(Path(tmp) / "eval", args.num_images, tuple(args.size),
                                                   50_000 + args.seed)
            fit_images = fit_images or write_shapes_scenes(Path(tmp) / "fit", args.num_images, tuple(args.size),
                                                           60_000 + args.seed)
        report = attention_similarity(
            model, images=images, fit_images=fit_images, num_images=args.num_images,
            image_size=tuple(args.size), seed=args.seed,
        )
    report.model = args.model
    print(format_similarity_table(report))
    if args.json:
        save_similarity_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.png:
        plot_similarity(report, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
