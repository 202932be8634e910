"""benchmarks/flops.py: table formatting (the counting itself is covered by tests/tools/test_complexity.py)."""
import importlib.util
from pathlib import Path

from csap_zoo.tools.complexity import ComplexityReport

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flops.py"


def load_script():
    spec = importlib.util.spec_from_file_location("flops_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(name, backbone, head):
    return ComplexityReport(name, 512, 512, 150, "fvcore", 5.0, 4.0, 1.0, backbone, head, 0.1)


def test_table_has_a_row_per_report_and_ratio_against_segnext():
    table = load_script().format_table([report("csap_tiny", 4.0, 1.0), report("segnext_tiny", 4.0, 2.0)])
    lines = table.splitlines()
    assert len(lines) == 4
    csap_row = next(line for line in lines if line.startswith("| csap_tiny"))
    assert "| 5.00 |" in csap_row  # backbone + head
    assert "0.833x" in csap_row  # 5 / 6
