"""Label map post-processing: the reference (bilinear resize of every class to every pixel, then arg-max) against
``csap_zoo.inference.bands.label_map_bands`` (the same labels, interpolating only classes that can still win), timed
round-robin in one process on several kinds of logits:

* ``random CSAP-T``: the head logits of a seed-0 random-weights CSAP-T (150 classes) on a random 512x512 image,
  what the runtimes race times: near-ties everywhere, the worst case (the shortcut declines and falls back);
* ``demo model``: the bundled trained demo model (6 classes) on its example image (256x256);
* ``sure 150``: ``csap_zoo.data.synthetic.region_logits`` at 64x64 -> 512x512, 150 classes, 12 and 40 regions: the
  shape of a trained ADE20K model's logits (one class well ahead inside objects), without trained weights;
* ``sure 19``: the same at 128x256 -> 1024x2048 (Cityscapes' size and classes);
* ``sure 150, two steps``: a 768x1024 image run at 512x683 (keep-ratio resize): the logits are resized twice.

Every case checks that the labels are equal, value for value. Times are medians of --repeats rounds.

    python benchmarks/labelmap.py                 # -> benchmarks/results/labelmap_2threads.{json,md}
    python benchmarks/labelmap.py --quick --json /tmp/l.json --md /tmp/l.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import csap_zoo  # noqa: E402
import csap_zoo.inference.bands as labelmap  # noqa: E402
from csap_zoo.data.synthetic import region_logits  # noqa: E402
from csap_zoo.fileio import atomic_write  # noqa: E402
from csap_zoo.inference.bands import ResizeStep, label_map_bands  # noqa: E402
from csap_zoo.inference.precision import cpu_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def reference(low: torch.Tensor, steps: Sequence[ResizeStep]) -> np.ndarray:
    """Resize every class through the steps band by band, then arg-max: what the shortcut falls back to."""
    return np.concatenate(list(labelmap._reference_bands(low, steps, labelmap.BAND_ELEMENTS)))


def shortcut(low: torch.Tensor, steps: Sequence[ResizeStep]) -> np.ndarray:
    return np.concatenate(list(label_map_bands(low, steps)))


def _model_logits(model: torch.nn.Module, image: torch.Tensor) -> Tuple[torch.Tensor, List[ResizeStep]]:
    from csap_zoo.models.fused import optimize_for_inference
    from csap_zoo.constants import IMAGENET_MEAN_255, IMAGENET_STD_255

    model = optimize_for_inference(model.eval())
    mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    size = tuple(image.shape[-2:])
    with torch.inference_mode():
        low = model((image.float() - mean) / std, upsample=False, crop=False).float()
    resized, covered = model.logit_geometry(*size)
    return low, [ResizeStep(tuple(low.shape[-2:]), resized, covered)]


def cases(quick: bool) -> Dict[str, Tuple[torch.Tensor, List[ResizeStep]]]:
    from PIL import Image

    from csap_zoo.models.segmentor import Segmentor

    out: Dict[str, Tuple[torch.Tensor, List[ResizeStep]]] = {}
    side = 128 if quick else 512
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, side, side), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out["random CSAP-T (150)"] = _model_logits(csap_zoo.create_model("csap_tiny", num_classes=150), image)
    demo = Path(csap_zoo.__file__).resolve().parent / "assets" / "demo"
    example = np.asarray(Image.open(demo / "example.png").convert("RGB"))
    out["demo model (6)"] = _model_logits(Segmentor.from_pretrained(str(demo)),
                                          torch.from_numpy(example.copy()).permute(2, 0, 1)[None])
    low_side = side // 8
    for regions in (12, 40):
        low = torch.from_numpy(region_logits(150, low_side, low_side, regions=regions, seed=regions))[None]
        out[f"sure 150, {regions} regions"] = (low, [ResizeStep((low_side, low_side), (side, side))])
    h, w = (16, 32) if quick else (128, 256)
    low = torch.from_numpy(region_logits(19, h, w, regions=40, seed=1))[None]
    out["sure 19, 40 regions"] = (low, [ResizeStep((h, w), (8 * h, 8 * w))])
    h, w = (16, 22) if quick else (64, 86)
    view = (8 * h, 8 * w - 5)
    low = torch.from_numpy(region_logits(150, h, w, regions=12, seed=2))[None]
    final = (3 * view[0] // 2, 3 * view[1] // 2)
    out["sure 150, two steps"] = (low, [ResizeStep((h, w), (8 * h, 8 * w), view), ResizeStep(view, final)])
    return out


def _median_ms(samples: List[float]) -> float:
    return round(statistics.median(samples) * 1e3, 2)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = []
    for name, (low, steps) in cases(args.quick).items():
        expected = reference(low, steps)
        equal = bool(np.array_equal(shortcut(low, steps), expected))
        plan = labelmap._Plan.build(low, steps)
        contenders: Dict[str, Callable[[], Any]] = {"reference": lambda: reference(low, steps),
                                                     "shortcut": lambda: shortcut(low, steps)}
        times: Dict[str, List[float]] = {k: [] for k in contenders}
        for _ in range(args.warmup):
            for fn in contenders.values():
                fn()
        for _ in range(args.repeats):  # round-robin
            for key, fn in contenders.items():
                time.sleep(0.005)
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        ref_ms, fast_ms = _median_ms(times["reference"]), _median_ms(times["shortcut"])
        several = None if plan is None else float((plan.code < 0).float().mean())
        width = None if plan is None or not plan.caps.numel() else float(plan.caps.float().mean())
        rows.append({"case": name, "classes": int(low.shape[1]), "logits": list(low.shape[-2:]),
                     "labels": list(expected.shape), "steps": len(steps), "shortcut_taken": plan is not None,
                     "blocks_with_several_classes": several, "mean_group_width": width,
                     "reference_ms": ref_ms, "shortcut_ms": fast_ms, "speedup": round(ref_ms / fast_ms, 2),
                     "labels_equal": equal})
        print(f"{name:28s} ref {ref_ms:8.2f} ms  shortcut {fast_ms:8.2f} ms  x{ref_ms / fast_ms:5.2f}  "
              f"{'taken' if plan is not None else 'fallback'}  equal={equal}", flush=True)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_info().to_dict(), "cpu_count": os.cpu_count(),
                        "threads": args.threads},
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "repeats": args.repeats, "rows": rows}


def markdown(payload: Dict[str, Any]) -> str:
    lines = ["# Label map post-processing: reference vs shortcut", "",
             f"{payload['date']}; {payload['machine']['cpu']['model']} "
             f"({' '.join(payload['machine']['cpu']['flags']) or 'no AVX2'}), {payload['machine']['cpu_count']} logical CPUs, "
             f"{payload['machine']['threads']} threads; torch {payload['versions']['torch']}; median of "
             f"{payload['repeats']} round-robin rounds. Reference: every class resized to every pixel "
             "(csap_zoo.inference.bands.resize_rows) and arg-maxed; shortcut: "
             "csap_zoo.inference.bands.label_map_bands.", "",
             "| logits | classes | logits -> labels | resize steps | shortcut | blocks with several classes | "
             "reference ms | shortcut ms | speed-up | labels equal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        several = "-" if r["blocks_with_several_classes"] is None else f"{100 * r['blocks_with_several_classes']:.1f}%"
        lines.append(f"| {r['case']} | {r['classes']} | {r['logits'][0]}x{r['logits'][1]} -> {r['labels'][0]}x"
                     f"{r['labels'][1]} | {r['steps']} | {'taken' if r['shortcut_taken'] else 'fallback'} | "
                     f"{several} | {r['reference_ms']:.1f} | {r['shortcut_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['labels_equal'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15; --quick 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 rounds, for tests")
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 15
    tag = f"labelmap_{args.threads}threads"
    json_path = Path(args.json or RESULTS / f"{tag}.json")
    md_path = Path(args.md or RESULTS / f"{tag}.md")
    payload = run(args)
    text = markdown(payload)
    for path, content in ((json_path, json.dumps(payload, indent=2) + "\n"), (md_path, text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp, content=content: Path(tmp).write_text(content, encoding="utf-8"))
    print(text)
    return 0 if all(r["labels_equal"] for r in payload["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
