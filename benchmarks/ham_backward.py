"""Cost of backpropagating through SegNeXt's NMF: ``nmf_grad="full"`` (every update) vs ``"one-step"``.

One training step of segnext_tiny's LightHam head (train mode, random features of a 512x512 image: strides 8/16/32,
channels 64/160/256, batch 2, 150 classes): forward, cross-entropy, backward. Two losses: on the logits resized to
the image (what the trainer does) and on the stride-8 logits (the head alone, an upper bound on the ratio).

* time: every variant in one process, timed round-robin (each round starts one variant further along), after
  warm-up steps; median and p90 per variant.
* memory: (a) bytes the autograd graph saves for backward (saved-tensor hooks, each storage counted once);
  (b) peak resident-memory growth of one step in a fresh process (VmHWM minus the resident size before the
  step, large allocations mmap-ed so that freed memory leaves), several processes per variant, run round-robin.

    OMP_NUM_THREADS=1 python benchmarks/ham_backward.py                 # 1 thread, writes benchmarks/results/
    python benchmarks/ham_backward.py --repeats 20 --memory-runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

from csap_zoo.fileio import atomic_write

MODES = ("full", "one-step")
LOSSES = ("image", "stride8")
IN_CHANNELS = (64, 160, 256)


def _setup(mode: str, height: int, width: int, batch: int, seed: int = 0) -> Tuple[Any, List[torch.Tensor], Any]:
    from csap_zoo.models.heads.ham import HamHeadConfig

    torch.manual_seed(seed)
    head = HamHeadConfig(nmf_grad=mode).build(IN_CHANNELS, 150).train()
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, c, -(-height // s), -(-width // s), generator=gen)
             for c, s in zip(IN_CHANNELS, (8, 16, 32))]
    label = torch.randint(0, 150, (batch, height, width), generator=gen)
    return head, feats, label


def _step(head: Any, feats: List[torch.Tensor], label: torch.Tensor, loss: str) -> None:
    head.zero_grad(set_to_none=True)
    logits = head(feats)
    if loss == "image":
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        target = label
    else:
        target = label[:, ::8, ::8]
    F.cross_entropy(logits, target).backward()


def saved_bytes(head: Any, feats: List[torch.Tensor], label: torch.Tensor) -> int:
    """Bytes of the distinct storages the forward saves for backward (head parameters and inputs excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in head.parameters()}
    skip |= {f.untyped_storage().data_ptr() for f in feats}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    head.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = head(feats)
    F.cross_entropy(logits, label[:, ::8, ::8]).backward()
    return sum(seen.values())


def time_steps(height: int, width: int, batch: int, warmup: int, repeats: int) -> Dict[str, List[float]]:
    variants = {}
    for mode in MODES:
        head, feats, label = _setup(mode, height, width, batch)
        for loss in LOSSES:
            variants[f"{mode}/{loss}"] = (head, feats, label, loss)
    for args in variants.values():
        for _ in range(warmup):
            _step(*args)
    keys = list(variants)
    times: Dict[str, List[float]] = {k: [] for k in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            _step(*variants[key])
            times[key].append(time.perf_counter() - start)
    return times


def _child(mode: str, loss: str, height: int, width: int, batch: int) -> None:
    import psutil

    head, feats, label = _setup(mode, height, width, batch)
    before = psutil.Process().memory_info().rss
    _step(head, feats, label, loss)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"peak_mb": (peak - before) / 2 ** 20}))


def peak_memory(height: int, width: int, batch: int, runs: int, threads: int) -> Dict[str, List[float]]:
    # glibc serves allocations >= 64 KiB with mmap and unmaps them on free: resident memory then follows the live
    # tensors instead of whatever the heap keeps cached (without it the peaks of one variant vary by ~30 %).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MALLOC_MMAP_THRESHOLD_="65536")
    keys = [(m, loss) for m in MODES for loss in LOSSES]
    out: Dict[str, List[float]] = {f"{m}/{loss}": [] for m, loss in keys}
    for r in range(runs):
        shift = r % len(keys)
        for mode, loss in keys[shift:] + keys[:shift]:
            cmd = [sys.executable, __file__, "--child", mode, loss, str(height), str(width), str(batch)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
            out[f"{mode}/{loss}"].append(json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"])
    return out


def main(argv: List[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        mode, loss, h, w, b = argv[1:6]
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        _child(mode, loss, int(h), int(w), int(b))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ham_backward.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    saved = {}
    for mode in MODES:
        head, feats, label = _setup(mode, args.height, args.width, args.batch)
        saved[mode] = saved_bytes(head, feats, label) / 2 ** 20
    times = time_steps(args.height, args.width, args.batch, args.warmup, args.repeats)
    memory = peak_memory(args.height, args.width, args.batch, args.memory_runs, args.threads)

    rows = {}
    for key, values in times.items():
        ms = sorted(v * 1000 for v in values)
        rows[key] = {"median_ms": statistics.median(ms), "p90_ms": ms[max(0, -(-9 * len(ms) // 10) - 1)],
                     "min_ms": ms[0], "peak_rss_mb_median": statistics.median(memory[key]),
                     "peak_rss_mb_runs": memory[key], "times_ms": ms}
    ratios = {loss: {"time": rows[f"full/{loss}"]["median_ms"] / rows[f"one-step/{loss}"]["median_ms"],
                     "peak_rss": rows[f"full/{loss}"]["peak_rss_mb_median"]
                     / rows[f"one-step/{loss}"]["peak_rss_mb_median"]} for loss in LOSSES}
    ratios["saved_for_backward"] = saved["full"] / saved["one-step"]

    print(f"LightHam head (segnext_tiny), train step, batch {args.batch}, {args.height}x{args.width} image features, "
          f"{args.threads} thread(s), {args.repeats} round-robin repeats, {args.memory_runs} memory runs")
    print(f"{'variant':20s} {'median ms':>10s} {'p90 ms':>9s} {'peak RSS MiB':>13s}")
    for key, row in rows.items():
        print(f"{key:20s} {row['median_ms']:10.1f} {row['p90_ms']:9.1f} {row['peak_rss_mb_median']:13.1f}")
    print(f"saved for backward (MiB): full {saved['full']:.1f}, one-step {saved['one-step']:.1f}")
    for loss in LOSSES:
        print(f"full / one-step, loss on {loss}: time x{ratios[loss]['time']:.3f}, "
              f"peak RSS x{ratios[loss]['peak_rss']:.3f}")
    print(f"full / one-step, bytes saved for backward: x{ratios['saved_for_backward']:.3f}")

    result = {"config": vars(args), "torch": torch.__version__, "rows": rows, "saved_for_backward_mb": saved,
              "ratios_full_over_one_step": ratios}
    out = Path(args.out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
