"""benchmarks/labelmap.py: every case runs, checks its labels and reports both timings (nothing about time)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "labelmap.py"


def test_quick_run_writes_a_row_per_case_with_equal_labels(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(tmp_path / "l.json"),
                          "--md", str(tmp_path / "l.md")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads((tmp_path / "l.json").read_text())
    cases = {row["case"]: row for row in payload["rows"]}
    assert len(cases) == 6 and all(row["labels_equal"] for row in cases.values())
    assert not cases["random CSAP-T (150)"]["shortcut_taken"]  # near-ties everywhere: the reference runs
    assert cases["sure 150, 12 regions"]["shortcut_taken"]
    assert all(row["reference_ms"] > 0 and row["shortcut_ms"] > 0 for row in cases.values())
    table = (tmp_path / "l.md").read_text()
    assert table.count("\n| ") == 1 + len(cases)  # header + one row per case
