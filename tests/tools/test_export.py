"""csap_zoo.tools.export: ONNX / torch.export / TorchScript / torch.compile parity with eager PyTorch.

The model is CSAP-T with one MSCAN block per stage (``depths=(1, 1, 1, 1)``, random weights, 5 classes): the export
paths (padding arithmetic, every layer type of backbone and head, dynamic axes) are the same as at full depth, while
tracing, decomposing and compiling cost grow with the number of blocks (measured: an ONNX export ~20% cheaper than
at full depth, torch.compile ~40% cheaper). The native-logits ONNX check runs on SegNeXt-T (see its docstring).
Measured max abs differences (CPU fp32): onnxruntime ~1e-5 to 4e-5 (asserted < 1e-4), torch.export 0 (asserted
< 1e-5), TorchScript trace 0, torch.compile ~2e-5 (asserted < 1e-4).
"""
import os

import pytest
import torch

import csap_zoo
from csap_zoo.models.logits import SegmentorLogits
from csap_zoo.tools.export import (
    check_parity, compile_model, export_model, export_onnx, export_program, export_torchscript, load_program,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# sizes: the export size, not divisible by 32 (smaller and larger), a short-and-wide one
EXPORT_SIZE = (64, 96)
SIZES = [(64, 96), (100, 70), (33, 130), (130, 200)]


ONE_BLOCK_PER_STAGE = {"depths": (1, 1, 1, 1)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=5, backbone_args=ONE_BLOCK_PER_STAGE).eval()


@pytest.mark.parametrize("size", [(64, 96), (100, 70), (33, 47), (32, 32)])
def test_wrapper_matches_model(model, size):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert torch.equal(SegmentorLogits(model, branch_free=True)(x), model(x))
        assert torch.equal(SegmentorLogits(model, upsample=False, branch_free=True)(x), model(x, upsample=False))


def test_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=16)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "m.x", format="tflite")
    with pytest.raises(ValueError, match="minimum"):
        export_torchscript(model, tmp_path / "m.pt", 16, 64)
    with pytest.raises(IsADirectoryError):
        export_torchscript(model, tmp_path, *EXPORT_SIZE)
    with pytest.raises(ValueError, match="Segmentor"):
        SegmentorLogits(torch.nn.Conv2d(3, 3, 1), branch_free=True)
    trained = csap_zoo.create_model("csap_tiny", num_classes=5, backbone_args=ONE_BLOCK_PER_STAGE)  # training mode
    with pytest.raises(ValueError, match="eval mode"):
        export_torchscript(trained, tmp_path / "m.pt", *EXPORT_SIZE)
    with pytest.raises(FileNotFoundError):
        load_program(tmp_path / "missing.pt2")
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_no_partial_file(model, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_torchscript(model, tmp_path / "m.pt", *EXPORT_SIZE)
    assert not list(tmp_path.iterdir())


def test_torchscript_trace_parity_at_other_sizes(model, tmp_path):
    result = export_torchscript(model, tmp_path / "m.pt", *EXPORT_SIZE, check_sizes=SIZES)
    assert os.path.isfile(result.path) and result.max_abs_diff <= 1e-5
    assert result.checked_sizes == SIZES
    assert oct(os.stat(result.path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_check_parity_reports_shape_mismatch(model):
    with pytest.raises(RuntimeError, match="shape"):
        check_parity(model, lambda x: torch.zeros(1, 5, 8, 8), sizes=[(64, 64)])


@pytest.mark.slow
def test_onnx_native_logits(tmp_path):
    """``upsample=False``: the head's stride-8 logits, narrowed to the cells that overlap the zero-padded input.

    The head's graph is the one test_onnx_parity_dynamic_batch_and_sizes checks (upsample only changes what comes after
    it: ``Segmentor.logits_at_input``), so this runs on the segmentor whose dynamic export is cheapest, SegNeXt-T with
    one block per stage (a fixed NMF seed: deterministic, so parity is enforced), under CSAP's padding policy; at
    100x70 the narrowing is real (16x12 cells of the padded 128x96 input, 13x9 kept)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    segnext = csap_zoo.create_model("segnext_tiny", num_classes=5, nmf_seed=0, backbone_args=ONE_BLOCK_PER_STAGE).eval()
    segnext.pad_mode = "zero-to-stride"  # CSAP's policy (the narrowing); SegNeXt's own ("none") keeps every cell
    sizes = [(64, 96), (100, 70)]
    result = export_onnx(segnext, tmp_path / "m.onnx", *EXPORT_SIZE, upsample=False, check_sizes=sizes)
    assert result.max_abs_diff < 1e-4 and result.eager_max_abs_diff == 0  # enforced, not only reported
    assert result.checked_sizes == sizes
    with torch.no_grad():
        assert segnext(torch.zeros(1, 3, 100, 70), upsample=False).shape[-2:] == (13, 9)


@pytest.mark.slow
def test_torch_export_parity_and_reload(model, tmp_path):
    program, result = export_program(model, tmp_path / "m.pt2", *EXPORT_SIZE, check_sizes=SIZES)
    assert result.max_abs_diff <= 1e-5
    reloaded = load_program(result.path).module()
    x = torch.randn(1, 3, 90, 111)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_torch_compile_parity(model):
    compiled = compile_model(model)
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() < 1e-4  # measured ~2e-5


@pytest.mark.slow
def test_randomised_head_parity_is_reported_not_enforced(tmp_path):
    segnext = csap_zoo.create_model("segnext_tiny", num_classes=5, backbone_args=ONE_BLOCK_PER_STAGE).eval()
    result = export_torchscript(segnext, tmp_path / "s.pt", *EXPORT_SIZE, check_sizes=[EXPORT_SIZE])
    assert result.eager_max_abs_diff > 0 and "randomised" in result.notes
