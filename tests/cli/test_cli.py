"""The csap-zoo command line."""
import subprocess
import sys

from csap_zoo.cli import main


def test_models_table_lists_architectures_and_checkpoints(capsys):
    assert main(["models", "*tiny*"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:4] == ["name", "backbone", "dataset", "classes"] and "weights" in header
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]
            if line.strip() and "GMACs:" not in line and not line.startswith("published/prefix:")}
    assert set(rows) == {"csap_tiny", "csap_tiny.ade20k", "csap_tiny.cityscapes", "csap_tiny.cocostuff",
                         "csap_tiny.shapes", "segnext_tiny", "segnext_tiny.ade20k", "segnext_tiny.cityscapes"}
    # csap_tiny.ade20k: MSCAN-T (3.90M) + 0.76M head, ~5.3 GMACs, paper mIoU 42.9, not trained yet
    name, backbone, dataset, classes, params, gmacs, miou, weights = rows["csap_tiny.ade20k"]
    assert (backbone, dataset, classes, params, miou, weights) == ("mscan_tiny", "ade20k", "150", "4.66", "42.9",
                                                                     "unpublished")
    assert 5.0 < float(gmacs) < 5.5
    assert rows["segnext_tiny.ade20k"][-1] == "published/prefix"  # checked by a sha256 prefix, then pinned
    assert rows["csap_tiny.cityscapes"][3] == "19"
    assert rows["csap_tiny.shapes"][2:4] == ["shapes", "6"] and rows["csap_tiny.shapes"][-1] == "published"


def test_models_pattern_filters(capsys):
    assert main(["models", "segnext_s*"]) == 0
    out = capsys.readouterr().out
    assert "segnext_small.ade20k" in out and "csap_small" not in out
    assert main(["models", "nope*"]) == 1
    assert "nothing matches" in capsys.readouterr().err


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "csap_zoo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "models" in result.stdout
