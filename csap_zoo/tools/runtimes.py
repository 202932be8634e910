"""One model in several runtimes, side by side (benchmarks/runtimes.py, benchmarks/breakdown.py).

A :class:`RuntimeCase` names a model (a csap_zoo name or ``segformer_b0``), a runtime -- csap-zoo's ``Segmenter``,
torch, onnxruntime or OpenVINO -- and an input; :func:`build_runtime_call` prepares it as a callable timed from a
uint8 image to its label map, with the same normalisation and post-processing (:func:`label_map`) for all.
Memory per contender is measured in a fresh process (:func:`runtime_peak_memory`); :func:`export_runtime_onnx`
writes the ONNX file the onnxruntime and OpenVINO contenders read; :func:`runtime_gmacs` counts the work of one
image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference.backends import OPENVINO_CPU_CONFIG
from ..inference.precision import cpu_info
from .profiling import build_bench_model, segformer_b0

__all__ = [
    "OPENVINO_CONFIG", "RUNTIMES", "RUNTIME_PRECISIONS", "RuntimeCall", "RuntimeCase", "build_runtime_call",
    "calibration_images", "export_runtime_onnx", "flop_counter_gmacs", "label_map", "openvino_model", "ort_session",
    "runtime_gmacs", "runtime_peak_memory", "supported_precisions",
]

RUNTIMES = ("csap-zoo", "csap-zoo-torch", "csap-zoo-openvino", "torch", "onnxruntime", "openvino", "openvino-labels")
_SEGMENTER_RUNTIMES = ("csap-zoo", "csap-zoo-torch", "csap-zoo-openvino")
# The precisions each runtime runs here (bf16 only on CPUs with bf16 instructions: see supported_precisions)
RUNTIME_PRECISIONS: Dict[str, Tuple[str, ...]] = {
    "csap-zoo": ("fp32", "bf16", "int8"), "csap-zoo-torch": ("fp32", "bf16"),
    "csap-zoo-openvino": ("fp32", "bf16", "int8"), "torch": ("fp32", "bf16"), "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"), "openvino-labels": ("fp32", "bf16", "int8")}
CALIBRATION_IMAGES = 8  # int8 contenders calibrate on this many smooth random images of the case's size
_EXPORT_MULTIPLE = 32  # exported graphs return the cropped stride-8 cells: sizes must not need padding


def _hw(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass
class RuntimeCase:
    """One contender of the runtime comparison: ``model`` (a csap_zoo name or ``segformer_b0``) run by ``runtime``
    on a ``batch`` of uint8 ``height`` x ``width`` images, whole or in ``crop`` windows every ``stride`` pixels
    (``mode="slide"``, ``slide_batch`` windows per call), from the image to its label map; see
    :func:`build_runtime_call`. Plain data, so that a fresh process can rebuild it (:func:`runtime_peak_memory`).

    Runtimes: ``csap-zoo`` (what ``Segmenter(model, precision=...)`` runs by default: ``backend="auto"``),
    ``csap-zoo-torch`` (``backend="torch"``), ``csap-zoo-openvino`` (``backend="openvino"``: the same pre- and
    post-processing, the network in OpenVINO),
    ``torch`` (the PyTorch module on the whole batch: csap_zoo models through ``optimize_for_inference``,
    SegFormer as ``transformers`` builds it), ``onnxruntime`` and ``openvino`` (the ONNX file ``onnx_path``, native
    logits), ``openvino-labels`` (that file in OpenVINO with the resize and the arg-max appended to its graph, as
    ``Segmenter``'s OpenVINO backend builds them; whole images, batch 1). ``backbone_args`` go to the csap_zoo
    model's backbone (e.g. ``{"depths": (1, 1, 1, 1)}``: smaller networks for a smoke run). ``precision``: fp32, bf16
    (torch: a bf16 copy of the module; OpenVINO: the bf16 precision hint) or int8 (OpenVINO: NNCF, calibrated on
    ``CALIBRATION_IMAGES`` smooth random images), where the runtime has it (:data:`RUNTIME_PRECISIONS`)."""

    model: str
    runtime: str
    height: int = 512
    width: int = 512
    batch: int = 1
    num_classes: int = 150
    threads: int = 2
    mode: str = "whole"
    crop: Tuple[int, int] = (1024, 1024)
    stride: Tuple[int, int] = (768, 768)
    slide_batch: int = 4
    onnx_path: Optional[str] = None
    backbone_args: Optional[Dict[str, Any]] = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in RUNTIME_PRECISIONS.get(self.runtime, ()):
            raise ValueError(f"the {self.runtime} contender runs {RUNTIME_PRECISIONS.get(self.runtime)}, not "
                             f"{self.precision!r}")
        self.crop, self.stride = _hw(self.crop), _hw(self.stride)
        if self.backbone_args and self.model == "segformer_b0":
            raise ValueError("backbone_args are for csap_zoo models, not segformer_b0")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose from {RUNTIMES}")
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.runtime in _SEGMENTER_RUNTIMES and self.model == "segformer_b0":
            raise ValueError(f"the {self.runtime} runtime (Segmenter) runs csap_zoo models only")
        if self.runtime == "openvino-labels" and (self.mode != "whole" or self.batch != 1):
            raise ValueError("the openvino-labels contender runs whole images one at a time (batch 1)")
        if self.runtime in ("onnxruntime", "openvino", "openvino-labels"):
            if self.onnx_path is None:
                raise ValueError(f"the {self.runtime} contender needs onnx_path")
            h, w = self.window()
            if h % _EXPORT_MULTIPLE or w % _EXPORT_MULTIPLE:
                raise ValueError(f"{self.runtime} contenders need network inputs divisible by {_EXPORT_MULTIPLE} "
                                 f"(the exported graph returns the cropped logit cells), got {h}x{w}")

    @property
    def key(self) -> str:
        return f"{self.model}|{self.runtime}|{self.precision}"

    def window(self) -> Tuple[int, int]:
        """The size of one network input: the image (whole), or a window (shrunk to the image when larger)."""
        if self.mode == "whole":
            return self.height, self.width
        return min(self.crop[0], self.height), min(self.crop[1], self.width)

    def windows(self) -> int:
        """Network inputs of one image's size ``window()`` per image: 1 whole, the slide windows otherwise (the
        rule of ``Segmenter``'s slide mode: the last window of a row / column moved back to the image edge)."""
        if self.mode == "whole":
            return 1
        rows = max(self.height - self.crop[0] + self.stride[0] - 1, 0) // self.stride[0] + 1
        cols = max(self.width - self.crop[1] + self.stride[1] - 1, 0) // self.stride[1] + 1
        return rows * cols

    def network_shapes(self) -> List[Tuple[int, int, int, int]]:
        """The distinct input shapes the network sees (a single one lets the runtimes compile for it)."""
        h, w = self.window()
        if self.mode == "whole":
            return [(1 if self.runtime in _SEGMENTER_RUNTIMES else self.batch, 3, h, w)]
        n = self.windows()
        sizes = {self.slide_batch} if n >= self.slide_batch else set()
        if n % self.slide_batch:
            sizes.add(n % self.slide_batch)
        return [(size, 3, h, w) for size in sorted(sizes)]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class RuntimeCall:
    """A prepared contender: ``fn()`` maps the case's image batch to label maps; ``info`` says how it was set up
    (the runtime's settings as it reports them)."""

    case: RuntimeCase
    fn: Callable[[], Any]
    info: Dict[str, Any]

    def labels(self) -> Any:
        """One call's label maps as a (B, H, W) numpy array (outside timing: for agreement checks)."""
        import numpy as np

        out = self.fn()
        if isinstance(out, list):
            return np.stack(out)
        return out[None] if out.ndim == 2 else out


def label_map(low: torch.Tensor, out_size: Tuple[int, int],
              geometry: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None) -> Any:
    """Label maps (B, H, W) of native logits ``low`` (B, K, h, w): bilinearly resized to ``geometry[0]`` (default
    ``out_size``) and cropped to ``geometry[1]``, band of rows by band, then arg-maxed -- what ``Segmenter`` runs
    on a Segmentor's stride-8 logits without its label-map shortcut (:func:`csap_zoo.inference.bands.resize_rows`,
    then the arg-max): the post-processing a runtime's user writes, the same for every runtime contender."""
    import numpy as np

    from ..inference.bands import resize_rows

    resized, covered = geometry or (out_size, out_size)
    dtype = torch.uint8 if low.shape[1] <= 256 else torch.int32
    out = None
    y = 0
    for band in resize_rows([low], tuple(low.shape[-2:]), resized, keep=covered):
        part = band.max(dim=1).indices.to(dtype).numpy()
        if out is None:
            out = np.empty((low.shape[0],) + tuple(covered), dtype=part.dtype)
        out[:, y:y + part.shape[1]] = part
        y += part.shape[1]
    return out


class _WindowLogits(nn.Module):
    """Native logits from a runtime, resized to the input window (and cropped): what a Segmentor's ``forward``
    returns, so that ``Segmenter``'s slide mode can merge any runtime's windows."""

    def __init__(self, native: Callable[[torch.Tensor], torch.Tensor],
                 geometry: Callable[[int, int], Tuple[Tuple[int, int], Tuple[int, int]]]) -> None:
        super().__init__()
        self.native = native
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resized, (keep_h, keep_w) = self.geometry(x.shape[-2], x.shape[-1])
        logits = F.interpolate(self.native(x), size=resized, mode="bilinear", align_corners=False)
        return logits[:, :, :keep_h, :keep_w]


def supported_precisions(runtime: str) -> Tuple[str, ...]:
    """The precisions ``runtime`` runs on this CPU (bf16 only with bf16 instructions)."""
    return tuple(p for p in RUNTIME_PRECISIONS[runtime] if p != "bf16" or cpu_info().bf16)


def calibration_images(case: RuntimeCase) -> List[torch.Tensor]:
    """Smooth random uint8 (3, H, W) images of the case's size (low-frequency noise, closer to photographs than
    white noise), the int8 contenders' calibration set."""
    gen = torch.Generator().manual_seed(1)
    images = []
    for _ in range(CALIBRATION_IMAGES):
        low = torch.rand(1, 3, 8, 8, generator=gen) * 255
        images.append(F.interpolate(low, size=case.window(), mode="bilinear", align_corners=False)[0]
                      .round().clamp(0, 255).to(torch.uint8))
    return images


def _seeded_model(case: RuntimeCase) -> nn.Module:
    """The case's eval-mode PyTorch model with seed-0 random weights (the ONNX exports use the same seed)."""
    torch.manual_seed(0)
    if case.model == "segformer_b0":
        return segformer_b0(case.num_classes)
    from ..models.registry import build_model

    return build_model(case.model, num_classes=case.num_classes, backbone_args=case.backbone_args).eval()


def _same_size(h: int, w: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    return (h, w), (h, w)


def ort_session(path: str, threads: int, shape: Optional[Sequence[int]] = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op thread and no spinning (idle
    workers sleep instead of holding cores that the next contender of a round-robin needs); ``shape`` fixes
    the input's symbolic dimensions so that the session can plan for it."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the onnxruntime contender needs onnxruntime: pip install 'csap-zoo[export]'") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if shape is not None:
        import onnx

        dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, shape):
            if dim.dim_param:
                options.add_free_dimension_override_by_name(dim.dim_param, int(value))
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


OPENVINO_CONFIG = OPENVINO_CPU_CONFIG  # the same compilation as Segmenter's OpenVINO backend


def openvino_model(path: str, threads: int, shape: Optional[Sequence[int]] = None, precision: str = "fp32",
                   calibration: Optional[Sequence[Any]] = None, labels: Optional[Callable[[Any], Any]] = None):
    """The ONNX file compiled by OpenVINO for the CPU: latency hint (one stream), ``threads`` inference threads,
    f32 precision (no down-casting on CPUs that have bf16), or the bf16 hint, or quantized to int8 by NNCF on
    ``calibration`` (normalised inputs) first; ``shape`` reshapes the input to it first (static shapes are what
    OpenVINO's CPU plugin plans best for); ``labels`` edits the (quantized) graph before compiling."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    if shape is not None:
        model.reshape(list(shape))
    if precision == "int8":
        from ..inference.openvino_ir import quantize

        model = quantize(model, [c.numpy() for c in calibration or []])
    if labels is not None:
        model = labels(model)
    hint = "bf16" if precision == "bf16" else "f32"
    return core.compile_model(model, "CPU", {**OPENVINO_CONFIG, "INFERENCE_PRECISION_HINT": hint,
                                             "INFERENCE_NUM_THREADS": threads})


def _imagenet_normalized(images: torch.Tensor) -> torch.Tensor:
    """A (B, 3, H, W) 0-255 batch normalised with ImageNet's mean / std, as every exported contender is fed."""
    from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255

    mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def _calibration_inputs(case: RuntimeCase) -> Optional[List[torch.Tensor]]:
    """The normalised calibration images of an int8 contender that runs an exported graph (else None)."""
    if case.precision != "int8":
        return None
    return [_imagenet_normalized(image[None]) for image in calibration_images(case)]


def _native_runner(case: RuntimeCase) -> Tuple[Callable[[torch.Tensor], torch.Tensor],
                                                Callable[[int, int], Any], Dict[str, Any]]:
    """For every runtime but csap-zoo: normalised float batch -> native logits, the logits' geometry, and info."""
    shapes = case.network_shapes()
    shape = shapes[0] if len(shapes) == 1 else None
    if case.runtime == "torch":
        model = _seeded_model(case)
        dtype = torch.bfloat16 if case.precision == "bf16" else torch.float32
        if case.model == "segformer_b0":
            model = model.to(dtype)
            return ((lambda x: model(pixel_values=x.to(dtype)).logits.float()), _same_size,
                    {"variant": f"transformers eager, {dtype}"})
        from ..models.fused import optimize_for_inference

        fast = optimize_for_inference(model).to(dtype)
        return ((lambda x: fast(x.to(dtype), upsample=False, crop=False).float()), fast.logit_geometry,
                {"variant": f"optimize_for_inference, {dtype}"})
    path = str(case.onnx_path)
    if case.runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort_session(path, case.threads, shape)
        name = session.get_inputs()[0].name
        info = {"onnxruntime": ort.__version__, "intra_op_num_threads": case.threads, "inter_op_num_threads": 1,
                "allow_spinning": "0", "static_shape": list(shape) if shape else None}
        return (lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])), _same_size, info
    compiled = openvino_model(path, case.threads, shape, case.precision, _calibration_inputs(case))
    request = compiled.create_infer_request()
    info = {}
    for key in ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                "ENABLE_CPU_PINNING"):
        value = compiled.get_property(key)  # as the compiled model reports it
        info[key] = value.to_string() if hasattr(value, "to_string") else str(value)
    info["static_shape"] = list(shape) if shape else None

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data)  # valid until the next infer: used at once

    return run, _same_size, info


def build_runtime_call(case: RuntimeCase) -> RuntimeCall:
    """The contender's ``image -> label map`` callable on a fixed random uint8 batch (the same for every case of
    that size). What each call includes, alike for all runtimes: normalisation (ImageNet mean / std), the
    network, the bilinear resize of its logits to the image (or window) size and the arg-max, band of rows by
    band (:func:`label_map`, the code ``Segmenter`` runs); slide mode merges windows with ``Segmenter``'s own slide
    code for every runtime. The csap-zoo contender is ``Segmenter(model, resize=None).predict`` (one image at a
    time, as ``predict`` runs a batch)."""
    from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
    from ..inference import Segmenter

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (case.batch, 3, case.height, case.width), generator=gen, dtype=torch.uint8)
    one = image[0] if case.batch == 1 else image
    slide = dict(mode="slide", crop_size=case.crop, stride=case.stride, slide_batch_size=case.slide_batch)
    if case.runtime in _SEGMENTER_RUNTIMES:
        backend = {"csap-zoo": "auto", "csap-zoo-torch": "torch", "csap-zoo-openvino": "openvino"}[case.runtime]
        calibration = calibration_images(case) if case.precision == "int8" else None
        seg = Segmenter(_seeded_model(case), resize=None, backend=backend, backend_cache_dir=False,
                        precision=case.precision, calibration=calibration, **(slide if case.mode == "slide" else {}))
        for _ in range(3):  # setup: convert once, then the static compile a repeated shape gets
            seg.predict(one)
        info = {"variant": f"Segmenter(backend={backend!r}) -> {seg.backend}", "precision": case.precision}
        if seg.network is not None:
            info["threads"] = seg.network.threads
        return RuntimeCall(case, lambda: seg.predict(one), info)
    def normalized() -> torch.Tensor:
        return _imagenet_normalized(image)

    if case.runtime == "openvino-labels":
        return _openvino_labels_call(case, normalized)
    native, geometry, info = _native_runner(case)
    if case.mode == "slide":
        seg = Segmenter(_WindowLogits(native, geometry), resize=None, optimize=False, mean=IMAGENET_MEAN_255,
                        std=IMAGENET_STD_255, **slide)
        return RuntimeCall(case, lambda: seg.predict(one), info)
    size = (case.height, case.width)

    def call() -> Any:
        return label_map(native(normalized()), size, geometry(*size))

    return RuntimeCall(case, call, info)


def _openvino_labels_call(case: RuntimeCase, normalized: Callable[[], torch.Tensor]) -> RuntimeCall:
    """The ONNX file in OpenVINO with the bilinear resize of its logits to the image (what :func:`label_map` does
    for the ``openvino`` contender) and the arg-max appended to the graph
    (``csap_zoo.inference.backends.label_map_graph``), so that one OpenVINO call maps the ``normalized()`` image to
    its labels."""
    import openvino as ov

    from ..inference.backends import label_map_graph
    from ..inference.bands import ResizeStep

    shape = case.network_shapes()[0]
    resized, covered = _same_size(case.height, case.width)

    def labels(network: Any) -> Any:
        low = tuple(int(d) for d in network.output(0).get_shape())
        return label_map_graph(ov, network, [ResizeStep(low[-2:], resized, covered)], low[1])

    compiled = openvino_model(str(case.onnx_path), case.threads, shape, case.precision, _calibration_inputs(case),
                              labels)
    request = compiled.create_infer_request()

    def call() -> Any:
        request.infer({0: normalized().numpy()}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return RuntimeCall(case, call, {"variant": "resize + arg-max in the OpenVINO graph", "static_shape": list(shape)})


def export_runtime_onnx(name: str, path: str, num_classes: int = 150, height: int = 512, width: int = 512,
                        batch: Optional[int] = None, backbone_args: Optional[Dict[str, Any]] = None) -> str:
    """Export the seed-0 model ``name`` to ONNX for the runtime contenders: input ``image`` (B, 3, H, W) with
    dynamic batch, height and width, output its native logits (csap_zoo models through
    :func:`csap_zoo.tools.export.export_onnx` with ``upsample=False``; SegFormer-B0 with ``torch.onnx.export``).
    With ``batch``, a static graph for ``batch`` x 3 x ``height`` x ``width`` inputs only instead (a fraction of the
    dynamic export's time). ``backbone_args``: as in :class:`RuntimeCase`."""
    import warnings

    from .export import export_onnx

    if name != "segformer_b0":
        model = _seeded_model(RuntimeCase(name, "torch", num_classes=num_classes, backbone_args=backbone_args))
        export_onnx(model, path, height, width, batch=batch or 1, dynamic=batch is None, upsample=False, check=False)
        return path
    from ..fileio import atomic_write

    torch.manual_seed(0)  # the weights of the torch contender (_seeded_model)
    module = build_bench_model(name, num_classes)  # x -> native logits

    dim = torch.export.Dim.DYNAMIC
    example = torch.randn(batch or 2, 3, height, width)  # dynamic: batch 2, a batch of 1 would be specialised
    dynamic_shapes = None if batch else {"x": {0: dim, 2: dim, 3: dim}}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=18,
                                        input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=dynamic_shapes, verbose=False)
        program.save(tmp)

    atomic_write(path, write, suffix=".onnx")
    return path


def flop_counter_gmacs(module: nn.Module, x: torch.Tensor) -> float:
    """GMACs of ``module(x)`` by ``torch.utils.flop_counter`` (matmuls, convolutions and attention; it counts two
    FLOPs per multiply-accumulate). It traces what fvcore cannot (transformers' SegFormer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2e9


def runtime_gmacs(name: str, height: int, width: int, num_classes: int = 150,
                  backbone_args: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """GMACs of one ``height`` x ``width`` image up to the native logits: ``gmacs`` by fvcore for csap_zoo models
    (:func:`csap_zoo.tools.complexity.measure_complexity`, the papers' convention) and by the flop counter for
    SegFormer-B0; ``flop_counter`` by the flop counter for all (a cross-check). ``backbone_args``: as in
    :class:`RuntimeCase`."""
    torch.manual_seed(0)
    extra = {"backbone_args": backbone_args} if backbone_args else {}
    module = build_bench_model(name, num_classes, **extra)
    x = torch.randn(1, 3, height, width)
    counted = flop_counter_gmacs(module, x)
    if name == "segformer_b0":
        return {"gmacs": counted, "counter": "torch.utils.flop_counter", "flop_counter": counted}
    from .complexity import measure_complexity

    return {"gmacs": measure_complexity(name, height, width, num_classes, **extra).gmacs, "counter": "fvcore",
            "flop_counter": counted}


_RUNTIME_MEMORY_PROBE = """
import json, sys
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024
case = json.loads(sys.argv[1])
import torch
torch.set_num_threads(case["threads"])
from csap_zoo.tools import runtimes
runtimes._preload(case["runtime"], case["model"])
base = status("VmRSS")
call = runtimes.build_runtime_call(runtimes.RuntimeCase(**case))
setup_peak = status("VmHWM")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
with torch.inference_mode():
    call.fn()
peak = status("VmHWM")
mib = 2 ** 20
print(json.dumps({"call_peak_mb": max(0, peak - before) / mib, "process_peak_mb": (max(peak, setup_peak) - base) / mib,
                  "setup_mb": (before - base) / mib, "hwm_reset": reset}))
"""


def _preload(runtime: str, model: str) -> None:
    """Import what a contender needs, so that the memory probe's baseline holds the libraries' code."""
    import csap_zoo.inference  # noqa: F401

    if runtime == "onnxruntime":
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    elif runtime in ("openvino", "openvino-labels"):
        import openvino  # noqa: F401
    elif model == "segformer_b0":
        import transformers  # noqa: F401


def runtime_peak_memory(case: RuntimeCase, timeout: float = 900.0) -> Dict[str, Any]:
    """Memory of one contender, measured in a fresh Python process (in-process numbers are unreliable: the
    allocators of torch, onnxruntime and OpenVINO keep freed memory for reuse). The process imports the libraries,
    builds the contender (RSS ``setup_mb`` above the imports: weights, compiled graph, session), resets its peak
    RSS (``/proc/self/clear_refs``) and runs one call, its first: ``call_peak_mb`` is the peak RSS growth during
    it (activations, workspace, the runtime's arenas), ``process_peak_mb`` the process's peak RSS above the
    imports over setup and call. Linux only."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _RUNTIME_MEMORY_PROBE, json.dumps(case.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {case.key} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
