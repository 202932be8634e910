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
                        "--profile-runs", "1", "--no-openvino"]) == 0
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
    import torch

    import csap_zoo

    # CSAP-T with one block per stage (the same node kinds; converting costs less) and a small GEMM (its rate is
    # only reported)
    torch.manual_seed(0)
    model = csap_zoo.create_model("csap_tiny", num_classes=150, backbone_args={"depths": (1, 1, 1, 1)})
    lines = module._openvino_ops(1, 64, 64, 40, gemm_size=256, model=model)
    assert "OpenVINO backend" in lines[0]
    table = [line for line in lines[3:] if line.startswith("|")]
    kinds = [line.split("|")[3].strip() for line in table]
    # the backend's one graph holds the network, the resize to the image and the arg-max
    assert any(kind.startswith("Convolution") for kind in kinds)
    assert any(kind.startswith("Interpolate") for kind in kinds)
    assert any(kind.startswith("TopK") for kind in kinds)
    shares = [float(line.split("|")[2].strip().rstrip("%")) for line in table]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101
    rates = lines[-1]
    assert "GEMM alongside" in rates and "1x1 convolutions" in rates and "depthwise convolutions" in rates


def test_conv_gmacs_split_by_kind():
    spec = importlib.util.spec_from_file_location("breakdown_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = torch.nn.Conv2d(4, 8, 1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.kxk = torch.nn.Conv2d(8, 2, 3, padding=1)

        def forward(self, x, upsample=True):
            return self.kxk(self.dw(self.pw(x)))

    gmacs = module._conv_gmacs(Net(), torch.zeros(1, 4, 10, 10))
    assert gmacs["1x1"] * 1e9 == pytest.approx(100 * 8 * 4)
    assert gmacs["depthwise"] * 1e9 == pytest.approx(100 * 8 * 9)
    assert gmacs["dense kxk"] * 1e9 == pytest.approx(100 * 2 * 8 * 9)
    assert gmacs["linear"] == 0
