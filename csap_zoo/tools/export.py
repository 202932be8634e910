"""Export segmentors for deployment: ONNX, ``torch.export``, TorchScript, and ``torch.compile`` parity checks.

The :class:`~csap_zoo.models.segmentor.Segmentor` pads its input to a multiple of the backbone stride with Python
``if`` statements, which tracers turn into shape guards (a graph exported at 512x512 would only be valid for sizes
divisible by 32). Every exporter here therefore goes through
:class:`~csap_zoo.models.logits.SegmentorLogits` with ``branch_free=True``, which computes the same thing without
data-dependent branches: it always pads by ``(-size) mod stride`` (a zero pad when divisible), runs backbone and
head, resizes the stride-8 logits to the padded size and narrows them back to the input size. Its outputs are
identical to ``model(x)``.

What each format supports (checked by tests/tools/test_export.py):

* **ONNX** (opset >= 17, dynamo exporter): dynamic batch, height and width; any size >= the model's minimum (32)
  runs in onnxruntime, divisible by 32 or not, smaller or larger than the export size. Max abs difference to eager
  on random CSAP-T weights ~1e-5.
* **torch.export** (``.pt2``): dynamic height and width; the batch size is fixed to the example's, and the
  program's own guards reject sizes whose coarsest grids degenerate to a single cell (height or width <= 32, or
  both <= 64). Outputs are bit-identical to eager.
* **TorchScript**: ``torch.jit.script`` fails on the model (einops' ``rearrange(tensor, pattern, **axes_lengths)``
  cannot be compiled, and the blocks call it throughout), so :func:`export_torchscript` *traces* the wrapper. The tracer records the
  size arithmetic of the padding, so the trace runs at other sizes too (checked at the same sizes as ONNX); the
  batch is checked at the traced size only. TorchScript is deprecated upstream (torch warns on save/load):
  prefer ONNX or torch.export.
* **OpenVINO IR** (``.xml`` + ``.bin``, :func:`export_openvino`): dynamic batch, height and width, converted by
  ``openvino.convert_model``; ``precision="int8"`` quantizes it with NNCF on calibration inputs of the user's
  images. fp32 IRs should be compiled with ``INFERENCE_PRECISION_HINT=f32``: OpenVINO's CPU default on CPUs with
  bf16 instructions is bf16, which is how a bf16 deployment runs the same file.
* **torch.compile**: :func:`compile_model` compiles the wrapper once per input size (CPU needs a C++
  compiler; ``dynamic=True`` fails inside inductor on torch 2.14 for this model).

Heads with randomised inference (SegNeXt's NMF starts from random bases on every call) export fine, but two
eager runs already differ, so parity there is reported, not enforced.

Files are written to a temporary file next to the destination and renamed when complete.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..fileio import atomic_write
from ..models.logits import SegmentorLogits

__all__ = [
    "EXPORT_FORMATS", "ExportResult", "check_parity", "compile_model", "export_model", "export_onnx",
    "export_openvino", "export_program", "export_torchscript", "load_program", "onnx_session",
]

EXPORT_FORMATS = ("onnx", "torch-export", "torchscript", "openvino")
DEFAULT_CHECK_SIZES: Tuple[Tuple[int, int], ...] = ((512, 512), (333, 517), (200, 96), (97, 1000))
MIN_OPSET = 17

PathLike = Union[str, os.PathLike]


@dataclass
class ExportResult:
    """What an export wrote and how well it matches eager PyTorch."""

    format: str
    path: Optional[str]
    example_shape: Tuple[int, int, int, int]
    dynamic: Dict[str, bool]
    max_abs_diff: Optional[float] = None  # over checked sizes, exported vs eager
    eager_max_abs_diff: Optional[float] = None  # between two eager runs (non-zero: randomised model)
    checked_sizes: List[Tuple[int, int]] = field(default_factory=list)
    notes: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- helpers
def _example(model: nn.Module, batch: int, height: int, width: int) -> torch.Tensor:
    min_size = getattr(model, "min_size", 32)
    if height < min_size or width < min_size:
        raise ValueError(f"export size {height}x{width} is below the model's minimum {min_size}x{min_size}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, getattr(model, "in_chans", 3), height, width, generator=gen).to(device)


def _wrapped(model: nn.Module, upsample: bool = True) -> SegmentorLogits:
    """The eval-mode model's branch-free ``x -> logits`` (see the module docstring)."""
    if model.training:
        raise ValueError("export expects a model in eval mode (call model.eval() first): dropout, drop path and "
                         "batch norm behave differently in training")
    return SegmentorLogits(model, upsample, branch_free=True).eval()


def _size_oblivious():
    """Trace without specialising sizes on 0/1 (keeps batch and small grids symbolic where torch supports it)."""
    try:
        import torch.fx.experimental._config as fx_config

        return fx_config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError):  # older torch
        import contextlib

        return contextlib.nullcontext()


def _dynamic_shapes(height: bool, width: bool, batch: bool) -> Dict[str, Dict[int, Any]]:
    dim = torch.export.Dim.DYNAMIC
    spec = {}
    if batch:
        spec[0] = dim
    if height:
        spec[2] = dim
    if width:
        spec[3] = dim
    return {"x": spec}


@torch.no_grad()
def check_parity(
        model: nn.Module,
        run: Callable[[torch.Tensor], torch.Tensor],
        sizes: Sequence[Tuple[int, int]] = DEFAULT_CHECK_SIZES,
        batch: int = 1,
        seed: int = 0,
        upsample: bool = True,
) -> Tuple[float, float]:
    """Max abs difference between ``run(x)`` and ``model(x)`` over random inputs of the given sizes, and between
    two eager runs (non-zero for randomised models). ``run`` returns a tensor or array."""
    gen = torch.Generator().manual_seed(seed)
    worst, eager_worst = 0.0, 0.0
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    for height, width in sizes:
        x = torch.randn(batch, getattr(model, "in_chans", 3), height, width, generator=gen).to(device)
        expected = model(x, upsample=upsample)
        got = torch.as_tensor(run(x)).to(expected.device)
        if got.shape != expected.shape:
            raise RuntimeError(f"exported model returned shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                               f"eager returns {tuple(expected.shape)}")
        worst = max(worst, float((got.float() - expected.float()).abs().max()))
        eager_worst = max(eager_worst, float((model(x, upsample=upsample) - expected).abs().max()))
    return worst, eager_worst


def _enforce(result: ExportResult, atol: float) -> ExportResult:
    if result.max_abs_diff is None:
        return result
    if result.eager_max_abs_diff:
        result.notes = (f"the model is randomised at inference (two eager runs differ by up to "
                        f"{result.eager_max_abs_diff:.3g}); parity reported, not enforced. " + result.notes).strip()
        return result
    if result.max_abs_diff > atol:
        raise RuntimeError(f"{result.format} export differs from eager PyTorch by {result.max_abs_diff:.3g} "
                           f"(tolerance {atol:g}) on sizes {result.checked_sizes}")
    return result


# ----------------------------------------------------------------------------------------------- ONNX
def onnx_session(path: PathLike, threads: Optional[int] = None, optimize: bool = True):
    """An onnxruntime CPU InferenceSession for an exported file."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("running ONNX models needs onnxruntime: pip install 'csap-zoo[export]'") from err
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(
        model: nn.Module,
        path: PathLike,
        height: int = 512,
        width: int = 512,
        batch: int = 1,
        opset: int = 18,
        dynamic: bool = True,
        check: bool = True,
        check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        atol: float = 1e-4,
        upsample: bool = True,
) -> ExportResult:
    """Export to ONNX with input ``image`` (B, C, H, W) and output ``logits`` (B, classes, H, W), or the head's
    stride-8 logits with ``upsample=False`` (what ``model(x, upsample=False)`` returns).

    With ``dynamic`` (default) batch, height and width are symbolic. ``check`` runs the file in onnxruntime on
    ``check_sizes`` (default: the export size plus sizes not divisible by 32, smaller and larger) and raises if it
    differs from eager by more than ``atol``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter needs opset >= {MIN_OPSET}")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'csap-zoo[export]'") from err
    wrapper = _wrapped(model, upsample)
    # Exporting with batch 2 keeps the batch axis symbolic (a batch of 1 would be specialised).
    example = _example(model, max(batch, 2) if dynamic else batch, height, width)
    shapes = _dynamic_shapes(dynamic, dynamic, dynamic) if dynamic else None

    def write(tmp: str) -> None:
        import warnings

        with warnings.catch_warnings(), _size_oblivious():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, dynamo=True, opset_version=opset, input_names=["image"],
                output_names=["logits"], dynamic_shapes=shapes, verbose=False,
            )
        program.save(tmp)

    try:
        out = atomic_write(path, write, suffix=".onnx")
    except (ImportError, ValueError, IsADirectoryError):
        raise
    except Exception as err:
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed: {err}") from err
    result = ExportResult("onnx", str(out), tuple(example.shape),
                          {"batch": dynamic, "height": dynamic, "width": dynamic})
    if check:
        sizes = list(check_sizes or ([(height, width)] + list(DEFAULT_CHECK_SIZES[1:] if dynamic else [])))
        session = onnx_session(out)
        batch_check = batch if not dynamic else 1
        result.max_abs_diff, result.eager_max_abs_diff = check_parity(
            model, lambda x: session.run(None, {"image": x.cpu().numpy()})[0], sizes, batch=batch_check,
            upsample=upsample)
        result.checked_sizes = sizes
        _enforce(result, atol)
    return result


# ----------------------------------------------------------------------------------------------- torch.export
def export_program(
        model: nn.Module,
        path: Optional[PathLike] = None,
        height: int = 512,
        width: int = 512,
        batch: int = 1,
        dynamic: bool = True,
        check: bool = True,
        check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        atol: float = 1e-5,
) -> Tuple[Any, ExportResult]:
    """``torch.export`` the model (dynamic height/width; batch fixed to ``batch``); save it as ``.pt2`` when
    ``path`` is given. Returns (ExportedProgram, ExportResult); ``program.module()(x)`` runs it."""
    wrapper = _wrapped(model)
    example = _example(model, batch, height, width)
    shapes = _dynamic_shapes(dynamic, dynamic, False) if dynamic else None
    try:
        with _size_oblivious():
            program = torch.export.export(wrapper, (example,), dynamic_shapes=shapes)
    except Exception as err:
        raise RuntimeError(f"torch.export of {type(model).__name__} failed: {err}") from err
    out = None
    if path is not None:
        out = atomic_write(path, lambda tmp: torch.export.save(program, tmp), suffix=".pt2")
    result = ExportResult("torch-export", None if out is None else str(out), tuple(example.shape),
                          {"batch": False, "height": dynamic, "width": dynamic},
                          notes="sizes must keep the stride-32 grid above one cell (H, W > 32, not both <= 64)")
    if check:
        sizes = list(check_sizes or ([(height, width)] + list(DEFAULT_CHECK_SIZES[1:] if dynamic else [])))
        module = program.module()
        result.max_abs_diff, result.eager_max_abs_diff = check_parity(model, module, sizes, batch=batch)
        result.checked_sizes = sizes
        _enforce(result, atol)
    return program, result


def load_program(path: PathLike):
    """Load a ``.pt2`` written by :func:`export_program`; call ``.module()`` on it to run it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported program not found: {path}")
    return torch.export.load(str(path))


# ----------------------------------------------------------------------------------------------- TorchScript
def export_torchscript(
        model: nn.Module,
        path: PathLike,
        height: int = 512,
        width: int = 512,
        batch: int = 1,
        check: bool = True,
        check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        atol: float = 1e-5,
) -> ExportResult:
    """Trace to TorchScript (see the module docstring for why scripting is not offered); ``check`` compares
    the saved file with eager at the traced size and at sizes not divisible by 32."""
    wrapper = _wrapped(model)
    example = _example(model, batch, height, width)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    except Exception as err:
        raise RuntimeError(f"TorchScript tracing of {type(model).__name__} failed: {err}") from err
    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, tmp)

    out = atomic_write(path, write, suffix=".pt")
    result = ExportResult("torchscript", str(out), tuple(example.shape),
                          {"batch": False, "height": True, "width": True},
                          notes="traced; TorchScript is deprecated upstream")
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(out))
        sizes = list(check_sizes or ([(height, width)] + list(DEFAULT_CHECK_SIZES[1:])))
        result.max_abs_diff, result.eager_max_abs_diff = check_parity(model, loaded, sizes, batch=batch)
        result.checked_sizes = sizes
        _enforce(result, atol)
    return result


# ----------------------------------------------------------------------------------------------- torch.compile
def compile_model(model: nn.Module, dynamic: Optional[bool] = False, **compile_kwargs: Any) -> Callable:
    """``torch.compile`` of the branch-free wrapper (same outputs as ``model(x)``).

    ``dynamic=False`` (default) compiles once per input size. ``dynamic=True`` currently fails inside inductor
    on CPU for this model (torch 2.14: a symbolic stride comparison it cannot decide), so it is not the default.
    """
    return torch.compile(_wrapped(model), dynamic=dynamic, **compile_kwargs)


# ----------------------------------------------------------------------------------------------- OpenVINO
def export_openvino(
        model: nn.Module,
        path: PathLike,
        height: int = 512,
        width: int = 512,
        precision: str = "fp32",
        calibration: Optional[Sequence[Any]] = None,
        check: bool = True,
        check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        atol: float = 1e-4,
) -> ExportResult:
    """Export to an OpenVINO IR: ``path`` (``.xml``) and the ``.bin`` beside it, input ``image`` (B, C, H, W) with
    dynamic axes, output the logits at the input's resolution.

    ``precision``: ``"fp32"``, or ``"int8"`` (NNCF post-training quantization; ``calibration``: normalised
    (1, C, H, W) inputs of your images, e.g. ``Segmenter(model).calibration_inputs(paths)``). ``check`` compares
    an fp32 file with eager PyTorch on ``check_sizes`` (raises above ``atol``) and reports, for int8, the largest
    difference without enforcing it. Both files are written atomically.
    """
    from ..errors import UsageError
    from ..fileio import atomic_write_all
    from ..inference.openvino_ir import convert_network, import_openvino, quantize

    if precision not in ("fp32", "int8"):
        raise UsageError(f"an OpenVINO IR is exported at precision 'fp32' or 'int8', got {precision!r} (bf16 is a "
                         "compile-time choice: export fp32 and compile with INFERENCE_PRECISION_HINT=bf16)")
    target = Path(path)
    if target.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {target}")
    ov = import_openvino()
    _wrapped(model)  # eval-mode and Segmentor checks
    _example(model, 1, height, width)  # size checks
    network = convert_network(ov, model, upsample=True)
    if precision == "int8":
        network = quantize(network, [torch.as_tensor(c).float().numpy() for c in calibration or []])
    import tempfile

    with tempfile.TemporaryDirectory(prefix="csap_zoo_ir_", dir=target.parent if target.parent.is_dir() else None
                                     ) as folder:
        ov.save_model(network, os.path.join(folder, "model.xml"), compress_to_fp16=False)
        data = {name: Path(folder, f"model{name}").read_bytes() for name in (".xml", ".bin")}

        def writer(suffix: str) -> Callable[[str], None]:
            return lambda tmp: Path(tmp).write_bytes(data[suffix])

        atomic_write_all([(target.with_suffix(".bin"), writer(".bin")), (target, writer(".xml"))])
    result = ExportResult("openvino", str(target), (1, getattr(model, "in_chans", 3), height, width),
                          {"batch": True, "height": True, "width": True}, notes=f"precision {precision}")
    if check:
        sizes = list(check_sizes or ([(height, width)] + list(DEFAULT_CHECK_SIZES[1:])))
        compiled = ov.Core().compile_model(str(target), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result.max_abs_diff, result.eager_max_abs_diff = check_parity(
            model, lambda x: compiled(x.cpu().numpy())[0], sizes)
        result.checked_sizes = sizes
        if precision == "fp32":
            _enforce(result, atol)
        else:
            result.notes += "; int8: the difference to eager fp32 is reported, not enforced"
    return result


# ----------------------------------------------------------------------------------------------- dispatch
def export_model(model: nn.Module, path: PathLike, format: str = "onnx", **kwargs: Any) -> ExportResult:
    """Export to ``format`` (one of :data:`EXPORT_FORMATS`); keyword arguments go to the format's exporter."""
    if format == "openvino":
        return export_openvino(model, path, **kwargs)
    if format == "onnx":
        return export_onnx(model, path, **kwargs)
    if format == "torch-export":
        return export_program(model, path, **kwargs)[1]
    if format == "torchscript":
        kwargs.pop("dynamic", None)
        return export_torchscript(model, path, **kwargs)
    raise ValueError(f"unknown export format {format!r}; choose one of {EXPORT_FORMATS}")
