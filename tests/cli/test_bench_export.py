"""`csap-zoo export` and `csap-zoo bench`."""
import pytest
import torch

from csap_zoo.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_export_torchscript(tmp_path, capsys):
    out = tmp_path / "m.pt"
    rc = main(["export", "csap_tiny", str(out), "--format", "torchscript", "--size", "64", "96",
               "--num-classes", "3", "--no-check"])
    assert rc == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out


def test_export_errors_are_clear(tmp_path, capsys):
    assert main(["export", "csap_tiny", str(tmp_path / "m.onnx"), "--opset", "12"]) == 1
    assert "opset" in capsys.readouterr().err
    assert main(["export", "csap_tiny", str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "none.st")]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_export_onnx_with_check(tmp_path, capsys):
    """The real `csap-zoo export` to ONNX with its parity check, on a save_pretrained folder of CSAP-T with one block
    per stage: the command is the same, the export (whose cost grows with the number of blocks) about twice as fast
    as at full depth. Naming an architecture with --num-classes is covered by test_export_torchscript."""
    pytest.importorskip("onnxruntime")
    import csap_zoo

    torch.manual_seed(0)
    folder = csap_zoo.create_model("csap_tiny", num_classes=3, backbone_args={"depths": (1, 1, 1, 1)}).save_pretrained(
        str(tmp_path / "csap_tiny_one_block"))
    out = tmp_path / "m.onnx"
    assert main(["export", str(folder), str(out), "--size", "64", "96"]) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and "batch, height, width" in text
    assert out.is_file() and "64x96" in text  # the check ran at the export size (and the default other sizes)


def test_bench(capsys):
    rc = main(["bench", "csap_tiny", "--size", "64", "64", "--threads", "1", "--warmup", "0", "--repeats", "2",
               "--channels-last", "--no-memory"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "latency median / p90" in out and "channels_last" in out and "GMACs" in out
    assert "optimized median / p90" in out


def test_bench_unknown_model(capsys):
    assert main(["bench", "nope_tiny", "--no-memory"]) == 1
    assert "unknown architecture" in capsys.readouterr().err
