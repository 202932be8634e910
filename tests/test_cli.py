"""The csap-zoo command line."""
import subprocess
import sys

from csap_zoo.cli import main


def test_models_table_lists_every_architecture(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("csap_tiny", "csap_large", "segnext_tiny", "segnext_large"):
        assert name in out
    # params column: csap_tiny has the MSCAN-T backbone (3.90M) plus a 0.76M head at 150 classes
    row = next(line for line in out.splitlines() if line.startswith("csap_tiny "))
    assert "4.66" in row


def test_models_pattern_filters(capsys):
    assert main(["models", "segnext_*"]) == 0
    out = capsys.readouterr().out
    assert "segnext_small" in out and "csap_small" not in out
    assert main(["models", "nope*"]) == 1
    assert "no architecture matches" in capsys.readouterr().err


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "csap_zoo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "models" in result.stdout
