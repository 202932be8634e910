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
    """The real `csap-zoo export` to ONNX with its parity check (dynamic axes, onnxruntime vs eager at the export size
    and the default other sizes), given a save_pretrained folder. The folder holds SegNeXt-T with one block per stage
    and a fixed NMF seed (deterministic, so the check is enforced, not only reported): the command does the same, and
    its export takes well under half the time of CSAP-T's (torch.export tracing with dynamic shapes dominates and
    grows with the graph). Naming an architecture with --num-classes is covered by test_export_torchscript; CSAP's
    ONNX parity by tests/tools/test_export.py."""
    pytest.importorskip("onnxruntime")
    import csap_zoo

    torch.manual_seed(0)
    model = csap_zoo.create_model("segnext_tiny", num_classes=3, nmf_seed=0, backbone_args={"depths": (1, 1, 1, 1)})
    folder = model.save_pretrained(str(tmp_path / "segnext_one_block"))
    out = tmp_path / "m.onnx"
    assert main(["export", str(folder), str(out), "--size", "64", "96"]) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and "batch, height, width" in text
    assert out.is_file() and "over sizes 64x96, " in text and "randomised" not in text


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


def test_export_openvino_fp32_checked_and_int8_calibrated(tmp_path, capsys):
    """An OpenVINO IR (.xml + .bin, dynamic axes): fp32 checked against eager at several sizes, int8 quantized on
    --calibration images; the precisions a format does not have are one clear error."""
    pytest.importorskip("nncf")
    import numpy as np

    from csap_zoo.data.png import save_png

    import csap_zoo

    save_png(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8), tmp_path / "c.png")
    torch.manual_seed(0)
    small = tmp_path / "small"
    csap_zoo.create_model("csap_tiny", num_classes=3, backbone_args={"depths": (1, 1, 1, 1)}).save_pretrained(small)
    common = ["--size", "64", "64"]
    assert main(["export", str(small), str(tmp_path / "f.xml"), "--format", "openvino", *common]) == 0
    out = capsys.readouterr().out
    assert "max abs difference to eager PyTorch" in out and (tmp_path / "f.bin").is_file()
    assert main(["export", str(small), str(tmp_path / "q.xml"), "--format", "openvino", "--precision", "int8",
                 "--calibration", str(tmp_path / "c.png"), "--no-check", *common]) == 0
    assert (tmp_path / "q.xml").is_file() and (tmp_path / "q.bin").is_file()
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(tmp_path / "q.xml")).get_ops()}
    assert "FakeQuantize" in ops and "FakeQuantize" not in {
        op.get_type_name() for op in ov.Core().read_model(str(tmp_path / "f.xml")).get_ops()}
    capsys.readouterr()
    assert main(["export", "csap_tiny", str(tmp_path / "m.onnx"), "--precision", "int8", *common]) == 2
    assert "exported as an OpenVINO IR" in capsys.readouterr().err
    assert main(["export", "csap_tiny", str(tmp_path / "n.xml"), "--format", "openvino", "--precision", "int8",
                 *common]) == 2
    assert "needs --calibration" in capsys.readouterr().err
