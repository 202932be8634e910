"""benchmarks/gpu.py: the dry run on the CPU writes every configuration; without a GPU the real run is one error
line."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_dry_run_writes_every_configuration(tmp_path):
    out = tmp_path / "gpu"
    # in this process (the CLI itself runs in the test below): a fresh interpreter would import torch, timm and
    # transformers again
    assert load_script().main(["--dry-run", "--json", f"{out}.json", "--md", f"{out}.md"]) == 0
    data = json.loads(Path(f"{out}.json").read_text())
    assert data["settings"]["height"] == data["settings"]["width"] == 32  # the dry run's tiny sizes
    assert data["settings"]["train_size"] == [32, 32]
    assert data["settings"]["warmup"] == data["settings"]["train_warmup"] == 0  # one (timed) call per configuration
    assert {"date", "dry_run", "device", "settings", "inference", "training", "recipe_iterations"} <= set(data)
    assert data["dry_run"] is True and data["device"]["name"] and data["device"]["torch"] == torch.__version__
    inference = data["inference"]
    assert {(r["model"], r["dtype"], r["layout"]) for r in inference} == {
        (m, d, l) for m in ("csap_tiny", "segnext_tiny", "segformer_b0") for d in ("fp32", "fp16", "bf16")
        for l in ("contiguous", "channels_last")}
    for r in inference:
        assert "error" not in r, r
        assert {"batch", "execution", "median_ms", "images_per_s", "peak_mem_mb"} <= set(r)
        assert r["execution"] == "eager"  # torch.compile is skipped in a dry run
    training = data["training"]
    assert {(r["model"], r["dtype"], r["layout"]) for r in training} == {
        (m, d, l) for m in ("csap_tiny", "segnext_tiny", "segformer_b0") for d in ("bf16", "fp16")
        for l in ("contiguous", "channels_last")}
    for r in training:
        assert "error" not in r, r
        assert r["batch"] == 2 and r["optimizer"] == "AdamW"
        assert {"median_ms", "its_per_s", "images_per_s", "peak_mem_mb", "hours_for_160k"} <= set(r)
    md = Path(f"{out}.md").read_text()
    assert "dry run" in md and "## Inference" in md and "## Training step" in md and "| segformer_b0 |" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_the_real_run_is_one_error_line(tmp_path):
    proc = run_script("--json", str(tmp_path / "g.json"), "--md", str(tmp_path / "g.md"))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--dry-run" in lines[0], proc.stderr
    assert not (tmp_path / "g.json").exists()
