"""Start-up times of the command line and the package, each in a fresh interpreter.

    python benchmarks/startup.py                       # 7 rounds, prints a table
    python benchmarks/startup.py --rounds 11 --md benchmarks/results/startup.md --json benchmarks/results/startup.json

Timed (wall clock, from process start to exit): ``csap-zoo --help``, ``csap-zoo COMMAND --help`` for every command,
``import csap_zoo``, ``import torch`` (the floor any command that runs a model pays) and a whole ``csap-zoo predict``
of the bundled demo image with the bundled demo model. The cases run round-robin (one of each per round), so a
machine that slows down for a minute slows every case alike; the table gives the median, the fastest and the
slowest round. Exits 1 when the median of any help case is above ``--help-target`` seconds (default 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from csap_zoo.fileio import atomic_write
from csap_zoo.inference.precision import CPU_FLAGS, cpu_info

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = ROOT / "csap_zoo" / "assets" / "demo" / "example.png"
COMMANDS = ("models", "predict", "eval", "download", "convert", "publish", "push", "export", "bench", "train")


def cli_prefix() -> List[str]:
    """How a user starts the command line here: the installed ``csap-zoo`` script beside this Python, else
    ``python -m csap_zoo.cli``."""
    script = Path(sys.executable).with_name("csap-zoo")
    if script.is_file():
        return [str(script)]
    found = shutil.which("csap-zoo")
    return [found] if found else [sys.executable, "-m", "csap_zoo.cli"]


def cases(out_dir: str, commands: Sequence[str], predict: bool) -> List[Tuple[str, List[str]]]:
    cli = cli_prefix()
    chosen = [("csap-zoo --help", cli + ["--help"])]
    chosen += [(f"csap-zoo {name} --help", cli + [name, "--help"]) for name in commands]
    chosen += [("import csap_zoo", [sys.executable, "-c", "import csap_zoo"]),
               ("import torch", [sys.executable, "-c", "import torch"])]
    if predict:
        chosen.append(("csap-zoo predict (demo image, demo model)",
                       cli + ["predict", str(DEMO_IMAGE), "--model", "csap_tiny.shapes", "--pretrained", "--out",
                              out_dir, "--no-progress"]))
    return chosen


def time_once(argv: List[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def run(rounds: int, commands: Sequence[str], predict: bool) -> Dict[str, object]:
    with tempfile.TemporaryDirectory() as out_dir:
        chosen = cases(out_dir, commands, predict)
        for _, argv in chosen:  # one untimed run each: the OS file cache, .pyc files
            time_once(argv)
        times: Dict[str, List[float]] = {name: [] for name, _ in chosen}
        for _ in range(rounds):
            for name, argv in chosen:
                times[name].append(time_once(argv))
    return {
        "cpu": cpu_info().to_dict(), "python": platform.python_version(), "rounds": rounds,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cases": {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for name, t in times.items()},
    }


def table(result: Dict[str, object], help_target: float) -> str:
    cpu = result["cpu"]
    lines = [f"Start-up times, {result['rounds']} rounds round-robin, {result['date']}; {cpu['model']}, "
             f"{cpu['cores']} cores, flags {' '.join(cpu['flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; "
             f"Python {result['python']}; load {result['load_avg_1_5_15']}", "",
             "| case | median s | min s | max s |", "|---|---|---|---|"]
    for name, t in result["cases"].items():
        mark = " (over target)" if name.endswith("--help") and t["median_s"] > help_target else ""
        lines.append(f"| {name} | {t['median_s']:.2f}{mark} | {t['min_s']:.2f} | {t['max_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--commands", nargs="*", default=list(COMMANDS), choices=COMMANDS,
                        help="commands whose --help is timed (default: all)")
    parser.add_argument("--no-predict", action="store_true", help="skip the demo predict")
    parser.add_argument("--help-target", type=float, default=1.0, help="seconds a help may take (median)")
    parser.add_argument("--json", help="write the result as JSON here")
    parser.add_argument("--md", help="write the table as Markdown here")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.commands, not args.no_predict)
    text = table(result, args.help_target)
    print(text, end="")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    if args.md:
        atomic_write(args.md, lambda tmp: Path(tmp).write_text(text))
    slow = [name for name, t in result["cases"].items() if name.endswith("--help") and t["median_s"] > args.help_target]
    if slow:
        print(f"over the {args.help_target:.1f} s target: {', '.join(slow)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
