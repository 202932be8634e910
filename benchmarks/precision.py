"""Accuracy of every precision and backend against fp32: label agreement and mIoU on the shapes demo's validation
split, with the bundled demo model (CSAP-T trained on the generated shapes dataset: trained weights, so a changed
label is a real change, unlike with random weights where most pixels are near-ties).

Contenders: torch fp32 (the reference), torch bf16 (a bf16 copy of the fused model), OpenVINO fp32, OpenVINO bf16
(precision hint), OpenVINO int8 (NNCF, calibrated on images of the training split, never on the validation
images); bf16 only where the CPU has bf16 instructions. Each is ``Segmenter(model, backend=..., precision=...)``
at the demo's own test size, the same thing ``csap-zoo eval --precision ...`` runs. Tolerances (the issue's): bf16
within 0.1 mIoU points of fp32, int8 within 0.5.

    python benchmarks/precision.py                       # -> benchmarks/results/precision_shapes.{json,md}
    python benchmarks/precision.py --val 8 --calibration 4 --json /tmp/p.json --md /tmp/p.md   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

import csap_zoo
from csap_zoo.data import open_dataset
from csap_zoo.data.synthetic import generate_shapes_dataset, shapes_dataset_info
from csap_zoo.fileio import atomic_write
from csap_zoo.inference import Segmenter, cpu_info
from csap_zoo.evaluation import Evaluator

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE_POINTS = {"bf16": 0.1, "int8": 0.5}


def contenders(bf16: bool) -> List[Dict[str, str]]:
    """(backend, precision) pairs in run order; the first is the reference."""
    found = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    return [{"backend": b, "precision": p} for b, p in found if p != "bf16" or bf16]


def run(val: int, calibration: int, size: int, seed: int) -> Dict[str, Any]:
    model = csap_zoo.create_model("csap_tiny.shapes", pretrained=True).eval()
    info = shapes_dataset_info()
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as cache:
        generate_shapes_dataset(root, num_train=calibration, num_val=val, size=(size, size), seed=seed)
        dataset = open_dataset("folder", root, split="val", info=info)
        train = sorted((Path(root) / "train" / "images").iterdir())
        rows: List[Dict[str, Any]] = []
        reference: List[np.ndarray] = []
        for spec in contenders(cpu_info().bf16):
            start = time.perf_counter()
            seg = Segmenter(model, backend=spec["backend"], precision=spec["precision"], backend_cache_dir=cache,
                            calibration=train if spec["precision"] == "int8" else None)
            evaluator = Evaluator(info.num_classes, info.ignore_index, info.class_names)
            same = total = 0
            for index in range(len(dataset)):
                image, mask = dataset[index]
                labels = seg.predict(image)
                evaluator.update(labels, mask)
                if not rows:
                    reference.append(labels)
                same += int((labels == reference[index]).sum())
                total += labels.size
            result = evaluator.compute()
            rows.append({**spec, "mIoU": 100 * result.mIoU, "aAcc": 100 * result.aAcc,
                         "label_agreement": same / total, "seconds": time.perf_counter() - start})
    base = rows[0]["mIoU"]
    for row in rows:
        row["delta_points"] = row["mIoU"] - base
        limit = TOLERANCE_POINTS.get(row["precision"])
        row["tolerance_points"] = limit
        row["within_tolerance"] = None if limit is None else abs(row["delta_points"]) <= limit
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_info().to_dict(),
            "settings": {"val_images": val, "calibration_images": calibration, "size": size, "seed": seed,
                         "model": "csap_tiny.shapes", "test_size": list(model.data_config.test_size)},
            "versions": {"csap_zoo": csap_zoo.__version__, "openvino": _version("openvino"),
                         "nncf": _version("nncf"), "torch": _version("torch")},
            "contenders": rows}


def _version(name: str) -> Optional[str]:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def format_markdown(payload: Dict[str, Any]) -> str:
    s, cpu = payload["settings"], payload["cpu"]
    lines = ["# Precision against fp32 (shapes demo, validation split)", "",
             f"{payload['date']}; {cpu['model']} ({cpu['cores']} logical CPUs; {' '.join(cpu['flags'])}); "
             + ", ".join(f"{k} {v}" for k, v in payload["versions"].items() if v), "",
             f"{s['model']} on {s['val_images']} generated {s['size']}x{s['size']} validation images (seed "
             f"{s['seed']}), run at its test size {s['test_size'][0]}x{s['test_size'][1]}; int8 calibrated on "
             f"{s['calibration_images']} training-split images. Label agreement: share of pixels equal to torch "
             f"fp32's.", "",
             "| backend | precision | mIoU | Δ mIoU (points) | tolerance | aAcc | labels = torch fp32 | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["contenders"]:
        verdict = "-" if r["tolerance_points"] is None else (
            f"±{r['tolerance_points']} {'met' if r['within_tolerance'] else 'NOT met'}")
        lines.append(f"| {r['backend']} | {r['precision']} | {r['mIoU']:.2f} | {r['delta_points']:+.2f} | {verdict} "
                     f"| {r['aAcc']:.2f} | {100 * r['label_agreement']:.3f}% | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=int, default=50, help="validation images (the demo split has 50)")
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration images (training split)")
    parser.add_argument("--size", type=int, default=128, help="generated image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(RESULTS / "precision_shapes.json"))
    parser.add_argument("--md", default=str(RESULTS / "precision_shapes.md"))
    args = parser.parse_args(argv)
    payload = run(args.val, args.calibration, args.size, args.seed)
    markdown = format_markdown(payload)
    print(markdown)
    for path, text in ((args.json, json.dumps(payload, indent=2) + "\n"), (args.md, markdown)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"wrote {args.json}, {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
