"""Rebuild the bundled demo checkpoint ``csap_tiny.shapes`` (csap_zoo/assets/demo/) from scratch, offline.

    python scripts/build_demo.py [--data data/shapes] [--out runs/shapes-demo]

1. writes the generated shapes dataset (``csap_zoo.data.synthetic``; 400 train / 100 val images of 128x128);
2. trains CSAP-T from scratch with the ``shapes-demo`` preset (the same as
   ``csap-zoo train --preset shapes-demo --generate-shapes 400 100``);
3. exports the final model with fp16 tensors into ``csap_zoo/assets/demo`` (config.json, model.safetensors, model
   card) with a held-out example image, and writes its manifest entry from that folder (``publish_entry``: package
   source, sha256, size, metrics).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import csap_zoo  # noqa: E402
from csap_zoo.data.png import save_png  # noqa: E402
from csap_zoo.data.synthetic import generate_shapes_dataset, render_shapes_sample  # noqa: E402
from csap_zoo.hub.publish import publish_entry  # noqa: E402
from csap_zoo.models.serialization import save_pretrained  # noqa: E402

ASSETS = REPO / "csap_zoo" / "assets" / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--out", default="runs/shapes-demo")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    args = parser.parse_args()

    generate_shapes_dataset(args.data, num_train=args.num_train, num_val=args.num_val, size=(128, 128), seed=0)
    start = time.time()
    result = csap_zoo.train("shapes-demo", data_root=args.data, out_dir=args.out)
    minutes = (time.time() - start) / 60
    model = csap_zoo.from_pretrained(result.final_dir)
    metrics = dict(model.metrics, train_minutes=round(minutes, 1), device="cpu",
                   command="csap-zoo train --preset shapes-demo --generate-shapes 400 100")
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    save_pretrained(model, ASSETS, metrics=metrics, dtype=torch.float16)
    image, _ = render_shapes_sample(424242, (256, 256), max_shapes=5)  # not in the training set
    save_png(image, ASSETS / "example.png")

    weights = ASSETS / "model.safetensors"
    publish_entry(ASSETS, "csap_tiny.shapes", package="assets/demo/model.safetensors", license_id="apache-2.0",
                  notes="Demo: CSAP-T trained from scratch on the generated shapes dataset (csap_zoo.data.synthetic); "
                        "ships with the package (fp16 tensors) so prediction works offline. Not a benchmark model.")
    print(f"demo: mIoU {metrics.get('mIoU')} on {args.num_val} held-out images after {minutes:.1f} min; "
          f"{weights.stat().st_size / 1e6:.1f} MB at {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
