"""``csap-zoo predict`` on a folder of mixed image sizes, whole wall time: the torch backend against the default
(``--backend auto``: OpenVINO on the CPU), cold (an empty cache: the one conversion included) and warm.

ADE20K's protocol resizes each image keep-ratio into (2048, 512), so almost every image gives the network another
input shape; a backend that converted or compiled per shape would pay that per image. The folder holds ``--images``
generated images (smooth noise) whose sizes mimic ADE20K's: long side 400-900 px, aspect ratio 0.5-2, so the network
inputs are 512 px on the short side and 256-1024 on the long one. Each run is a fresh ``csap-zoo predict`` process
(imports, model build, every PNG written), round-robin over the contenders, ``--rounds`` times.

    python benchmarks/predict_folder.py                  # -> benchmarks/results/predict_folder.{json,md}
    python benchmarks/predict_folder.py --images 4 --rounds 1 --json /tmp/f.json --md /tmp/f.md   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from csap_zoo.data.png import save_png
from csap_zoo.data.transforms import keep_ratio_size
from csap_zoo.fileio import atomic_write
from csap_zoo.inference import cpu_info

RESULTS = Path(__file__).resolve().parent / "results"
SCALE = (2048, 512)


def ade_like_sizes(count: int, seed: int) -> List[tuple]:
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        long = int(rng.integers(400, 901))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        h, w = (long, max(16, int(long / aspect))) if aspect >= 1 else (max(16, int(long * aspect)), long)
        sizes.append((h, w))
    return sizes


def write_images(folder: Path, sizes: List[tuple], seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    for index, (h, w) in enumerate(sizes):
        low = rng.uniform(0, 255, (max(2, h // 64), max(2, w // 64), 3))
        rows = np.linspace(0, low.shape[0] - 1, h).round().astype(int)
        cols = np.linspace(0, low.shape[1] - 1, w).round().astype(int)
        image = low[rows][:, cols] + rng.normal(0, 6, (h, w, 3))
        save_png(np.clip(image, 0, 255).astype(np.uint8), folder / f"{index:04d}.png")


def timed(argv: List[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="csap_tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(RESULTS / "predict_folder.json"))
    parser.add_argument("--md", default=str(RESULTS / "predict_folder.md"))
    args = parser.parse_args(argv)
    sizes = ade_like_sizes(args.images, args.seed)
    shapes = {keep_ratio_size(h, w, SCALE) for h, w in sizes}
    base_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    base_env.pop("CSAP_ZOO_BACKEND", None)
    times: Dict[str, List[float]] = {"torch": [], "auto (cold cache)": [], "auto (warm cache)": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_images(folder, sizes, args.seed)
        import torch

        import csap_zoo

        torch.manual_seed(args.seed)  # one set of weights for every run (the cache key hashes them)
        saved = Path(tmp) / "model"
        csap_zoo.create_model(args.model, num_classes=150).save_pretrained(saved)
        command = [sys.executable, "-m", "csap_zoo.cli", "predict", str(folder), "--model", str(saved), "--resize",
                   str(SCALE[0]), str(SCALE[1]), "--no-progress"]
        for round_index in range(args.rounds):
            for name in times:
                out = Path(tmp) / f"out_{round_index}_{list(times).index(name)}"  # a fresh folder: nothing skipped
                cache = Path(tmp) / f"cache_{round_index}"
                env = {**base_env, "CSAP_ZOO_CACHE": str(cache)}
                extra = ["--backend", "torch"] if name == "torch" else []
                if name == "auto (cold cache)" and cache.exists():
                    raise SystemExit("the cold run must start from an empty cache")
                times[name].append(timed(command + ["--out", str(out)] + extra, env))
                print(f"round {round_index + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    payload = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_info().to_dict(),
               "settings": {"images": args.images, "rounds": args.rounds, "model": args.model, "scale": list(SCALE),
                            "threads": args.threads, "distinct_network_inputs": len(shapes), "seed": args.seed},
               "seconds": times, "median_seconds": medians,
               "per_image_ms": {name: 1000 * value / args.images for name, value in medians.items()},
               "torch_over_auto_warm": medians["torch"] / medians["auto (warm cache)"],
               "torch_over_auto_cold": medians["torch"] / medians["auto (cold cache)"]}
    cpu = payload["cpu"]
    lines = ["# `csap-zoo predict` on a folder of mixed sizes", "",
             f"{payload['date']}; {cpu['model']} ({cpu['cores']} logical CPUs; {' '.join(cpu['flags'])}); "
             f"{args.threads} threads", "",
             f"{args.images} generated images of ADE20K-like sizes, keep-ratio resized into {SCALE}: "
             f"{len(shapes)} distinct network inputs; {args.model} (seeded random weights, 150 classes, saved once); whole "
             f"wall time "
             f"of a fresh process, labels and overlays written; median of {args.rounds} round-robin rounds.", "",
             "| backend | wall s | per image ms | torch / this |", "|---|---|---|---|"]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.1f} | {1000 * value / args.images:.0f} | "
                     f"{medians['torch'] / value:.2f}x |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    for path, text in ((args.json, json.dumps(payload, indent=2) + "\n"), (args.md, markdown)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda out, text=text: Path(out).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
