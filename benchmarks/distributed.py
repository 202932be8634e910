"""Wall time of ``csap-zoo eval`` and ``csap-zoo predict`` on 1 and on 2 processes (torchrun, gloo on the CPU).

A generated shapes set (``--images`` images of ``--size`` x ``--size``, a folder dataset with masks) is evaluated
and predicted with the bundled demo model (``csap_tiny.shapes``, the network in PyTorch, native size), each through
``torchrun --nproc_per_node=N -m csap_zoo.cli ...`` so that both counts pay the same launcher. The cores are
shared out: each of N processes gets ``cores // N`` intra-op threads. A wall time is the whole command (start-up,
model loading and the collectives included), the best of ``--rounds`` after one untimed run; the eval JSON and the
predicted PNGs of the two counts are compared byte for byte.

    python benchmarks/distributed.py                     # JSON to benchmarks/results/distributed.json
    python benchmarks/distributed.py --images 8 --size 128 --json /tmp/d.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from csap_zoo.data.synthetic import generate_shapes_dataset
from csap_zoo.fileio import atomic_write
from csap_zoo.inference.precision import cpu_info

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "csap_zoo" / "assets" / "demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(nproc: int, args: List[str]) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "csap_zoo.cli", *args,
            "--model", str(DEMO), "--backend", "torch", "--resize", "0", "--no-progress"]


def _timed(cmd: List[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def _tree(root: Path) -> Dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(images: int, size: int, rounds: int, counts: List[int]) -> Dict[str, object]:
    cores = os.cpu_count() or 1
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_shapes_dataset(work / "data", num_train=0, num_val=images, size=(size, size), seed=0)
        inputs = work / "data" / "val" / "images"
        reports: Dict[int, bytes] = {}
        outputs: Dict[int, Dict[str, bytes]] = {}
        for nproc in counts:
            threads = max(1, cores // nproc)
            for name in ("eval", "predict"):
                times = []
                for attempt in range(rounds + 1):
                    if name == "eval":
                        args = ["eval", "--data", str(work / "data"), "--dataset", "folder",
                                "--json", str(work / f"eval{nproc}.json")]
                    else:
                        args = ["predict", str(inputs), "--out", str(work / f"out{nproc}"), "--overwrite"]
                    elapsed = _timed(_command(nproc, args), threads)
                    if attempt:  # the first run warms the file cache and the .pyc files
                        times.append(elapsed)
                rows.append({"command": name, "processes": nproc, "threads_per_process": threads,
                             "wall_s": round(min(times), 3), "all_s": [round(t, 3) for t in times]})
                print(f"{name:8s} {nproc} process(es) x {threads} thread(s): {min(times):7.2f} s", flush=True)
            reports[nproc] = (work / f"eval{nproc}.json").read_bytes()
            outputs[nproc] = _tree(work / f"out{nproc}")
        first = counts[0]
        identical = {"eval_json": all(reports[n] == reports[first] for n in counts),
                     "predict_pngs": all(outputs[n] == outputs[first] for n in counts)}
    import torch

    return {"cpu": cpu_info().to_dict(), "torch": torch.__version__, "images": images, "size": [size, size],
            "model": "csap_tiny.shapes (the bundled demo), PyTorch, native size", "rounds": rounds,
            "runs": rows, "identical": identical}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each case (the best is kept)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    args = parser.parse_args(argv)
    result = run(args.images, args.size, args.rounds, args.processes)
    print(json.dumps(result["identical"]))
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
