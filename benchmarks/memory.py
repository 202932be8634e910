"""Peak memory (RSS) of predicting large image files, whole and slide, one fresh child process per case.

Each case runs ``csap_zoo.predict.predict_paths`` (what ``csap-zoo predict`` runs: label PNG + overlay PNG) on a
generated image with the bundled demo model ``csap_tiny.shapes`` (6 classes), one torch thread. The child reports
its RSS high-water mark after imports and model loading ("base"); the parent reads the child's peak RSS from
``os.wait4``. Cases: 4096^2, 8192^2 and 12288^2 RGB images as PNG and JPEG, and a 13000^2 1-bit PNG, each in

- ``whole``: keep-ratio resize to 128x128 (the demo model's evaluation size), one pass;
- ``slide``: keep-ratio resize to 1024x1024, 512x512 windows every 341 pixels (9 windows);
- ``tta`` (only with ``--modes tta``): ``whole`` at six scales 0.5-1.75, each also mirrored (12 views).

"image MiB" is what PIL holds for the decoded file (4 bytes a pixel for RGB, 1 for 1-bit and 8-bit gray):
the one full-size buffer prediction keeps; "above image" is the growth minus it.

    python benchmarks/memory.py                                  # all cases, JSON to benchmarks/results/memory.json
    python benchmarks/memory.py --sizes 4096 --json /tmp/m.json  # a subset
    python benchmarks/memory.py --code-root /tmp/old_checkout    # measure another checkout of the package

Generated images are cached in ``--cache`` (default: a folder in the system temp dir); they take about 1 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from csap_zoo.fileio import atomic_write
from csap_zoo.inference.precision import cpu_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (4096, 8192, 12288)
MODES = {
    "whole": dict(mode="whole", resize=(128, 128)),
    "slide": dict(mode="slide", resize=(1024, 1024), crop_size=(512, 512), stride=(341, 341)),
    "tta": dict(mode="whole", resize=(128, 128), ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True),
}
DEFAULT_MODES = ("whole", "slide")
# bytes a pixel in PIL's own storage of each decoded mode
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}

_GENERATE = r"""
import sys
from PIL import Image, ImageDraw
Image.MAX_IMAGE_PIXELS = None
size, kind, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if kind == "1bit":
    image = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for k in range(1, 8):
        r = size * k // 16
        draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], outline=1, width=max(1, size // 64))
    image.save(path, format="PNG", optimize=False)
else:
    ramp = Image.linear_gradient("L").resize((size, size), Image.BILINEAR)
    rgb = Image.merge("RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(rgb)
    for k in range(8):
        x = size * k // 8
        draw.rectangle([x, x // 2, x + size // 10, x // 2 + size // 7], fill=(40 * k % 256, 200, 90))
    if kind == "png":
        rgb.save(path, format="PNG", compress_level=1)
    else:
        rgb.save(path, format="JPEG", quality=90)
"""

_CASE = r"""
import json, os, resource, sys, time, warnings
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from PIL import Image
from csap_zoo import create_model
from csap_zoo.inference import Segmenter
from csap_zoo.predict import predict_paths
options = json.loads(sys.argv[2])
model = create_model("csap_tiny.shapes", pretrained=True)
seg = Segmenter(model, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
error = None
try:
    predict_paths(seg, [sys.argv[3]], sys.argv[4], progress=False)
except Exception as err:
    error = f"{type(err).__name__}: {str(err)[:300]}"
print(json.dumps({"base_kib": base, "seconds": time.perf_counter() - start, "error": error}))
"""


def _generate(cache: Path, size: int, kind: str) -> Path:
    suffix = {"png": "png", "jpg": "jpg", "1bit": "png"}[kind]
    path = cache / f"bench_{kind}_{size}.{suffix}"
    if not path.is_file():
        atomic_write(path, lambda tmp: subprocess.run([sys.executable, "-c", _GENERATE, str(size), kind, tmp],
                                                      check=True), suffix=f".{suffix}")
    return path


def run_case(code_root: Path, image: Path, options: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Predict one file in a fresh child; its peak RSS (from wait4), its RSS after loading, time and error."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.Popen([sys.executable, "-c", _CASE, str(code_root), json.dumps(options), str(image), out],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        start = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    report: Dict[str, Any] = {"peak_mib": usage.ru_maxrss / 1024, "exit": proc.returncode}
    try:
        child = json.loads(stdout.strip().splitlines()[-1])
        report.update(base_mib=child["base_kib"] / 1024, seconds=child["seconds"], error=child["error"])
        report["growth_mib"] = report["peak_mib"] - report["base_mib"]
    except (IndexError, ValueError, KeyError):
        report.update(base_mib=None, seconds=time.monotonic() - start, growth_mib=None,
                      error="timed out" if proc.returncode < 0 else f"child failed: {stderr.strip()[-300:]}")
    return report


def image_mib(path: Path) -> float:
    """MiB that PIL holds for the decoded file."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        return image.size[0] * image.size[1] * _PIL_BYTES.get(image.mode, 4) / 2 ** 20


def format_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| image | file | mode | RGB MiB | image MiB | peak RSS MiB | growth MiB | above image MiB | seconds "
             "| error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        growth = "-" if r["growth_mib"] is None else f"{r['growth_mib']:.0f}"
        above = "-" if r["growth_mib"] is None or "image_mib" not in r else f"{r['growth_mib'] - r['image_mib']:.0f}"
        held = f"{r['image_mib']:.0f}" if "image_mib" in r else "-"
        lines.append(f"| {r['size']}x{r['size']} {r['kind']} | {r['file_mib']:.1f} MiB | {r['mode']} "
                     f"| {r['decoded_mib']:.0f} | {held} | {r['peak_mib']:.0f} | {growth} | {above} "
                     f"| {r['seconds']:.1f} | {r['error'] or ''} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--kinds", nargs="+", default=["png", "jpg"], choices=["png", "jpg"])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES))
    parser.add_argument("--bitmap", type=int, default=13000, help="side of the 1-bit PNG case (0: skip it)")
    parser.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose csap_zoo is measured")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "csap_zoo_memory_bench")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case before it is killed")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    cases = [(s, k) for s in args.sizes for k in args.kinds]
    if args.bitmap:
        cases.append((args.bitmap, "1bit"))
    rows = []
    for size, kind in cases:
        image = _generate(args.cache, size, kind)
        for mode in args.modes:
            report = run_case(args.code_root, image, MODES[mode], args.timeout)
            row = dict(size=size, kind=kind, mode=mode, options=MODES[mode], file_mib=image.stat().st_size / 2 ** 20,
                       decoded_mib=size * size * 3 / 2 ** 20, image_mib=image_mib(image), **report)
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    payload = {"rows": rows, "code_root": str(args.code_root), "python": platform.python_version(),
               "machine": platform.machine(), "cpu": cpu_info().to_dict(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(payload, indent=2, default=list)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
