"""benchmarks/labelmap.py: every case runs, checks its labels and reports both timings (nothing about time)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "labelmap.py"


@pytest.mark.usefixtures("one_torch_thread")
def test_quick_run_writes_a_row_per_case_with_equal_labels(tmp_path, monkeypatch):
    # the script's main in this process (a fresh interpreter would import torch again); its sys.path entry is undone
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("labelmap_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--threads", "1", "--json", str(tmp_path / "l.json"),
                        "--md", str(tmp_path / "l.md")]) == 0
    payload = json.loads((tmp_path / "l.json").read_text())
    cases = {row["case"]: row for row in payload["rows"]}
    assert len(cases) == 6 and all(row["labels_equal"] for row in cases.values())
    assert not cases["random CSAP-T (150)"]["shortcut_taken"]  # near-ties everywhere: the reference runs
    assert cases["sure 150, 12 regions"]["shortcut_taken"]
    assert all(row["reference_ms"] > 0 and row["shortcut_ms"] > 0 for row in cases.values())
    table = (tmp_path / "l.md").read_text()
    assert table.count("\n| ") == 1 + len(cases)  # header + one row per case
