"""How often csap-zoo's banded resize + arg-max (``csap_zoo.inference.bands.resize_rows``, what every torch label map
equals) picks another label than ``F.interpolate(bilinear, align_corners=False)`` + arg-max.

    python benchmarks/interpolate_agreement.py [--maps 6] [--classes 150] [--json FILE]

Both compute the same convex combinations in another order of float operations, so values differ by float
rounding and labels only where two classes are that close. Logits: smooth random fields (bicubic-upsampled noise,
x4), half of them rounded to multiples of 0.25 (exact ties between classes everywhere), 64x64 -> 512x512.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from csap_zoo.fileio import atomic_write
from csap_zoo.inference.bands import resize_rows


def measure(maps: int, classes: int) -> dict:
    pixels = differing = 0
    worst = 0.0
    for seed in range(maps):
        g = torch.Generator().manual_seed(seed)
        low = F.interpolate(torch.randn(1, classes, 11, 11, generator=g), size=(64, 64), mode="bicubic",
                            align_corners=False) * 4
        if seed % 2:
            low = (low * 4).round() / 4
        ours = torch.cat(list(resize_rows([low], (64, 64), (512, 512), band_elements=10 ** 9)), dim=2)
        reference = F.interpolate(low, size=(512, 512), mode="bilinear", align_corners=False)
        pixels += ours[:, 0].numel()
        differing += int((ours.argmax(1) != reference.argmax(1)).sum())
        worst = max(worst, float((ours - reference).abs().max() / low.abs().max()))
    return {"maps": maps, "classes": classes, "pixels": pixels, "differing_labels": differing,
            "max_value_difference_relative_to_largest_logit": worst, "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=6)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.maps, args.classes)
    print(f"{result['differing_labels']} of {result['pixels']} labels differ "
          f"({100 * result['differing_labels'] / result['pixels']:.5f}%); largest value difference "
          f"{result['max_value_difference_relative_to_largest_logit']:.2e} of the largest |logit|")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
