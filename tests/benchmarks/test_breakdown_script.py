"""benchmarks/breakdown.py: the backbone / decoder decomposition and the profiler table, on a tiny input."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "breakdown.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_profile_script_prints_decomposition_and_top_operators(capsys):
    spec = importlib.util.spec_from_file_location("breakdown_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--size", "64", "64", "--threads", "1", "--warmup", "0", "--repeats", "1", "--top", "3",
                        "--no-openvino"]) == 0
    out = capsys.readouterr().out
    for part in ("backbone", "csap head", "ham head", "csap_tiny", "segnext_tiny"):
        assert f"| {part} |" in out
    assert out.count("a zero-cost decoder would give") == 2
    rows = [line for line in out.splitlines() if line.startswith("| ") and "|" in line[2:]]
    assert any("mkldnn" in line or "conv" in line for line in rows[-3:])  # profiler rows name real operators
    assert "eager (as built) csap_tiny under torch.profiler" in out  # before ...
    assert "optimized csap_tiny under torch.profiler" in out  # ... and after


def test_profile_script_lists_openvino_backend_nodes(capsys):
    pytest.importorskip("openvino")
    spec = importlib.util.spec_from_file_location("breakdown_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = module._openvino_ops(1, 64, 64, 40)
    assert "OpenVINO backend" in lines[0]
    kinds = [line.split("|")[3].strip() for line in lines[3:]]
    # the backend's one graph holds the network, the resize to the image and the arg-max
    assert any(kind.startswith("Convolution") for kind in kinds)
    assert any(kind.startswith("Interpolate") for kind in kinds)
    assert any(kind.startswith("TopK") for kind in kinds)
    shares = [float(line.split("|")[2].strip().rstrip("%")) for line in lines[3:]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101
