"""Where ``Segmenter`` runs a Segmentor's network: PyTorch or OpenVINO, and which one ``backend="auto"`` picks.

``backend="auto"`` (the default) runs OpenVINO on the CPU for a csap-zoo ``Segmentor`` at fp32, bf16 or int8
when the openvino package imports (it is a core dependency), and PyTorch otherwise: on CUDA, for any other module,
at fp16, or where openvino is missing. ``CSAP_ZOO_BACKEND=torch|openvino`` replaces what ``"auto"`` picks (a
deployment setting), except at int8, which only OpenVINO runs; an explicit ``backend=`` always wins.

``OpenVINONetwork`` maps a normalised (B, 3, H, W) batch to the model's native logits, what
``model(x, upsample=False, crop=False)`` returns, with OpenVINO on the CPU:

- the network is converted once, for every input size (:mod:`.openvino_ir`: dynamic batch, height and width,
  cached on disk, quantized to int8 on request);
- a new shape runs on the dynamic-shape compiled model at once (no compile per image, so a folder of mixed sizes
  pays one conversion and one compile); a shape that comes a third time gets its own static compile (~0.35 s for
  CSAP-T), ~15% faster than the dynamic one, kept for the ``max_shapes`` most recent shapes;
- precision ``"bf16"`` compiles the network with ``INFERENCE_PRECISION_HINT=bf16`` (its label maps come from a
  second, float32 resize + arg-max graph), ``"fp32"`` and ``"int8"`` with ``f32`` (the quantized nodes run int8);
- :meth:`OpenVINONetwork.label_map` appends the bilinear resizes (align_corners=False, cropped) and the arg-max over
  classes to the network's graph, so that the label map comes out of OpenVINO in one call: its resize + arg-max
  kernels are several times faster than the banded torch post-processing when the logits are noise-like. The
  labels equal the torch post-processing's except where two classes tie to float rounding; the intermediate
  full-size scores live inside OpenVINO, so this is used only up to ``LABEL_GRAPH_MAX_BYTES`` of them. Its sizes
  are inputs of one dynamic graph (per chain structure), and a repeated (shape, sizes) gets a static compile.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..constants import BACKENDS
from ..errors import UsageError
from ..models.segmentor import Segmentor
from ..settings import backend_override
from ..settings import cache_dir as default_cache_dir
from .bands import ResizeStep, label_dtype
from .openvino_ir import IRCache, convert_network, import_openvino, int8_key, network_key, quantize

__all__ = ["LABEL_GRAPH_MAX_BYTES", "OPENVINO_CPU_CONFIG", "OpenVINONetwork", "check_backend", "label_map_graph",
           "openvino_available", "resolve_backend"]

# How OpenVINO compiles for the CPU here: one latency-oriented stream; the precision hint is set per precision
OPENVINO_CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# Largest full-size float32 score map (classes x H x W) a label-map graph may hold inside OpenVINO (which keeps its
# buffers per compiled model); bigger maps take the banded torch post-processing instead.
LABEL_GRAPH_MAX_BYTES = 256 * 2 ** 20
_SEEN_LIMIT = 1024  # shapes remembered to tell a repeated shape from a new one
STATIC_AFTER = 2  # a shape gets its own static compile when it comes the third time
PathLike = Union[str, "os.PathLike[str]"]


def check_backend(backend: str) -> str:
    """The backend name, or one error listing the valid ones."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


def openvino_available() -> bool:
    """Whether the openvino package imports here."""
    try:
        import_openvino()
    except UsageError:
        return False
    return True


def resolve_backend(backend: str, model: nn.Module, device: torch.device, precision: str) -> str:
    """``"torch"`` or ``"openvino"``: ``backend`` itself, or what ``"auto"`` picks (see the module docstring)."""
    check_backend(backend)
    if backend != "auto":
        return backend
    if precision == "int8" and isinstance(model, Segmentor):  # only OpenVINO runs it
        return "openvino" if openvino_available() else "torch"
    override = backend_override()
    if override is not None:
        return override
    if (device.type == "cpu" and isinstance(model, Segmentor) and precision in _PRECISION_HINTS
            and openvino_available()):
        return "openvino"
    return "torch"


def label_map_graph(ov: Any, network: Any, steps: Sequence[ResizeStep], num_classes: int,
                    sizes_as_inputs: bool = False) -> Any:
    """``network`` (native logits; modified in place: pass a clone) followed by the resizes of ``steps`` and the
    arg-max over classes, its output now the (B, H, W) label map.

    ``sizes_as_inputs``: each step's output size and kept size become i64[2] inputs of the graph (after the image,
    in step order: out_size, then kept where it differs), so one graph serves every chain of the same structure;
    ``steps`` then only says which steps resize and which crop."""
    ops = ov.opset13
    logits = network.get_results()[0]
    node = logits.input_value(0)
    parameters = []

    def size_input(values: Sequence[int], name: str) -> Any:
        if not sizes_as_inputs:
            return ops.constant(np.array(values, dtype=np.int64))
        parameter = ops.parameter([2], np.int64, name=name)
        parameters.append(parameter)
        return parameter

    axes = ops.constant(np.array([2, 3], dtype=np.int64))
    for index, step in enumerate(steps):
        if tuple(step.in_size) != tuple(step.out_size):
            node = ops.interpolate(
                node, size_input(step.out_size, f"size{index}"), mode="linear_onnx", shape_calculation_mode="sizes",
                coordinate_transformation_mode="pytorch_half_pixel", axes=axes).output(0)
        if step.kept != tuple(step.out_size):
            stop = size_input(step.kept, f"keep{index}")
            node = ops.slice(node, ops.constant(np.array([0, 0], dtype=np.int64)), stop,
                             ops.constant(np.array([1, 1], dtype=np.int64)), axes=axes).output(0)
    # TopK-11 (the first with a stable order of equal values): ties go to the lower class index. For k=1 the sort
    # mode changes nothing but the kernel: sorting by value with stable=True is ~5x slower than by index.
    labels = ov.opset11.topk(node, np.array(1, dtype=np.int64), axis=1, mode="max", sort="index",
                             index_element_type="i32", stable=True).output(1)
    labels = ops.squeeze(labels, np.array([1], dtype=np.int64))
    labels = ops.convert(labels, "u8" if label_dtype(num_classes) == np.uint8 else "i32")
    network.add_results([ops.result(labels)])
    network.remove_result(logits)  # the graph's only output is now the label map
    if parameters:
        network.add_parameters(parameters)
    network.validate_nodes_and_infer_types()
    return network


def _size_inputs(steps: Sequence[ResizeStep]) -> list:
    """The size inputs of a ``sizes_as_inputs`` label-map graph for these steps, in its parameter order."""
    values = []
    for step in steps:
        if tuple(step.in_size) != tuple(step.out_size):
            values.append(np.array(step.out_size, dtype=np.int64))
        if step.kept != tuple(step.out_size):
            values.append(np.array(step.kept, dtype=np.int64))
    return values


class _Compiled:
    """Compiled models under keys, the ``limit`` most recently used kept."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.items: "OrderedDict[Hashable, Any]" = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        found = self.items.get(key)
        if found is None:
            found = self.items[key] = build()
            while len(self.items) > self.limit:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return found


class OpenVINONetwork:
    """A Segmentor's network in OpenVINO (CPU): ``network(x)`` -> native logits as a float32 torch tensor, and
    ``network.label_map(x, steps)`` -> the label map of those logits resized through ``steps``.

    Args:
        model: the Segmentor (in eval mode; it is not modified).
        threads: inference threads (default: ``torch.get_num_threads()``).
        cache_dir: the cache root for converted models (default ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``);
            ``False`` converts in memory only.
        max_shapes: shapes with their own static compile kept in memory.
        max_label_graphs: static label-map graphs (input shape and resizes) kept in memory; each holds its
            full-size scores (up to ``LABEL_GRAPH_MAX_BYTES``) while it lives.
        precision: ``"fp32"``, ``"bf16"`` (the float graph compiled for bf16) or ``"int8"`` (quantized).
        calibration: for int8, normalised (1, C, H, W) inputs of the user's images (arrays or tensors).
    """

    def __init__(self, model: nn.Module, threads: Optional[int] = None,
                 cache_dir: Union[PathLike, None, bool] = None, max_shapes: int = 8, max_label_graphs: int = 2,
                 precision: str = "fp32",
                 calibration: Optional[Sequence[Any]] = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        if precision not in _PRECISION_HINTS:
            raise UsageError(f"the OpenVINO backend runs precision 'fp32', 'bf16' or 'int8', got {precision!r}")
        self._ov = import_openvino()
        self.model = model.eval()
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self._calibration = None
        if precision == "int8":
            if not calibration:
                raise UsageError("precision='int8' needs calibration images of your data (Segmenter(..., "
                                 "calibration=[images]) or --calibration FILES); 16-32 are enough")
            self._calibration = [np.ascontiguousarray(np.asarray(c, dtype=np.float32)) for c in calibration]
        self._core = self._ov.Core()
        root = None if cache_dir is False else Path(cache_dir or default_cache_dir()) / "openvino"
        self._cache = IRCache(root, self._ov, self._core)
        self.cache_root = root
        self._ir: Any = None
        self.static_shapes = True  # whether repeated shapes get static compiles (see network_model)
        self._keys: Optional[Tuple[str, str]] = None
        self._dynamic: Any = None
        self._static = _Compiled(max_shapes)
        self._label_graphs = _Compiled(max_label_graphs)
        self._dynamic_label_graphs = _Compiled(4)
        self._post_graphs = _Compiled(4)  # bf16: the float32 resize + arg-max after the network
        self._seen: "OrderedDict[Hashable, int]" = OrderedDict()
        self._native_shapes: "OrderedDict[tuple, Tuple[int, ...]]" = OrderedDict()
        self.conversions = 0  # how many conversions ran here (not read from the cache)
        self.quantizations = 0  # how many int8 quantizations ran here
        self.static_compiles = 0  # shapes compiled on their own
        self.label_maps = 0  # how many label maps came out of a label-map graph

    @property
    def max_shapes(self) -> int:
        return self._static.limit

    def cache_key(self) -> str:
        """The on-disk key of the model this network runs (the float network, or its int8 quantization)."""
        if self._keys is None:
            base = network_key(self.model, self._ov.get_version())
            self._keys = (base, int8_key(base, self._calibration) if self._calibration is not None else base)
        return self._keys[1]

    def _convert(self) -> Any:
        converted = convert_network(self._ov, self.model)
        self.conversions += 1
        return converted

    def _quantize(self, network: Any) -> Any:
        quantized = quantize(network, self._calibration or [])
        self.quantizations += 1
        return quantized

    def network_model(self, shape: Optional[tuple] = None) -> Any:
        """The uncompiled OpenVINO model it runs (dynamic shape; float32, or int8-quantized): converted, or read from
        the cache, once. Clone it before changing it. With ``shape`` (B, C, H, W): a clone reshaped to it."""
        if shape is not None:
            model = self.network_model().clone()
            model.reshape({0: self._ov.PartialShape([int(s) for s in shape])})
            return model
        if self._ir is None:
            key = self.cache_key()
            base = self._keys[0]  # type: ignore[index]
            network = self._cache.get(base, self._convert)
            self._ir = network if key == base else self._cache.get(key, lambda: self._quantize(network))
            # OpenVINO 2026.4's CPU plugin crashes compiling a RandomUniform graph (SegNeXt's NMF bases) reshaped
            # to a static shape: such graphs run on the dynamic compile only
            self.static_shapes = not any(op.get_type_name() == "RandomUniform" for op in self._ir.get_ops())
        return self._ir

    def _compile(self, model: Any) -> Any:
        config = {**OPENVINO_CPU_CONFIG, "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[self.precision],
                  "INFERENCE_NUM_THREADS": self.threads}
        return self._core.compile_model(model, "CPU", config)

    def _repeated(self, key: Hashable) -> bool:
        """Whether ``key`` came ``STATIC_AFTER`` times before (and count this time)."""
        count = self._seen.pop(key, 0)
        self._seen[key] = count + 1
        while len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        return count >= STATIC_AFTER

    def _static_model(self, shape: tuple) -> Any:
        self.static_compiles += 1
        return self.network_model(shape)

    def compiled(self, shape: tuple) -> Any:
        """The compiled network for an input shape (B, C, H, W): a static compile for a repeated shape, else the
        dynamic one."""
        shape = tuple(int(s) for s in shape)
        model = self.network_model()
        if self.static_shapes and (shape in self._static.items or self._repeated(("network", shape))):
            return self._static.get(shape, lambda: self._compile(self._static_model(shape)))
        if self._dynamic is None:
            self._dynamic = self._compile(model)
        return self._dynamic

    @property
    def compiled_label_graphs(self) -> int:
        """How many static label-map graphs are held in memory now (at most ``max_label_graphs``)."""
        return len(self._label_graphs.items)

    def native_shape(self, shape: tuple) -> Tuple[int, ...]:
        """The shape of the native logits for an input shape (B, C, H, W)."""
        shape = tuple(int(s) for s in shape)
        found = self._native_shapes.get(shape)
        if found is None:
            model = self.network_model(shape)
            found = self._native_shapes[shape] = tuple(int(d) for d in model.output(0).get_shape())
            while len(self._native_shapes) > _SEEN_LIMIT:
                self._native_shapes.popitem(last=False)
        return found

    def fits_label_graph(self, shape: tuple, steps: Sequence[ResizeStep]) -> bool:
        """Whether :meth:`label_map` computes these resizes inside OpenVINO: batch 1 and every full-size score map
        within ``LABEL_GRAPH_MAX_BYTES``."""
        classes = self.native_shape(shape)[1]
        largest = max((s.out_size[0] * s.out_size[1] for s in steps), default=0)
        return int(shape[0]) == 1 and classes * largest * 4 <= LABEL_GRAPH_MAX_BYTES

    def label_map(self, x: torch.Tensor, steps: Sequence[ResizeStep]) -> np.ndarray:
        """The label map (B, H, W) of a normalised batch: the native logits resized through ``steps`` (each
        step's input is the previous step's kept output; the first's is the logits' size) and arg-maxed, in one
        OpenVINO call, in :func:`csap_zoo.inference.bands.label_dtype`."""
        self._check_input(x)
        shape = tuple(int(s) for s in x.shape)
        steps = tuple(ResizeStep(tuple(s.in_size), tuple(s.out_size), s.keep and tuple(s.keep)) for s in steps)
        classes = self.native_shape(shape)[1]
        image = np.ascontiguousarray(x.detach().float().numpy())
        key = (shape, steps)
        if self.precision == "bf16":
            result = self._bf16_label_map(image, shape, steps, classes)
        elif self.static_shapes and (key in self._label_graphs.items or self._repeated(("labels", key))):
            compiled = self._label_graphs.get(key, lambda: self._compile(label_map_graph(
                self._ov, self._static_model(shape), steps, classes)))
            result = compiled(image)[0]
        else:
            structure = tuple((tuple(s.in_size) != tuple(s.out_size), s.kept != tuple(s.out_size)) for s in steps)
            compiled = self._dynamic_label_graphs.get(structure, lambda: self._compile(label_map_graph(
                self._ov, self.network_model().clone(), steps, classes, sizes_as_inputs=True)))
            result = compiled([image, *_size_inputs(steps)])[0]
        self.label_maps += 1
        return np.array(result, copy=True)

    def _bf16_label_map(self, image: np.ndarray, shape: tuple, steps: Sequence[ResizeStep], classes: int) -> Any:
        """bf16: the network in bf16, then its (small) native logits resized and arg-maxed by a second, float32
        graph. In one bf16 graph the resize would run in bf16 and its full-size output be reordered to float32 for
        the arg-max, which costs more than bf16 saves on the network (32 of 113 ms for CSAP-T at 512x512)."""
        logits = np.ascontiguousarray(self.compiled(shape)(image)[0], dtype=np.float32)
        static = self._repeated(("post", shape, steps))  # a repeated chain: sizes as constants, ~25% faster
        structure = tuple((tuple(s.in_size) != tuple(s.out_size), s.kept != tuple(s.out_size)) for s in steps)

        def build() -> Any:
            ops = self._ov.opset13
            source = ops.parameter(list(logits.shape) if static else [-1, classes, -1, -1], np.float32,
                                   name="logits")
            graph = self._ov.Model([ops.result(source)], [source], "labels")
            graph = label_map_graph(self._ov, graph, steps, classes, sizes_as_inputs=not static)
            config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": self.threads}  # float32
            return self._core.compile_model(graph, "CPU", config)

        if static:
            return self._label_graphs.get(("post", logits.shape, steps), build)(logits)[0]
        compiled = self._post_graphs.get(structure, build)
        return compiled([logits, *_size_inputs(steps)])[0]

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.device.type != "cpu":
            raise UsageError("backend='openvino' runs on the CPU; use backend='torch' for other devices")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        compiled = self.compiled(tuple(x.shape))
        result = compiled(np.ascontiguousarray(x.detach().float().numpy()))[0]
        return torch.from_numpy(np.array(result, dtype=np.float32, copy=True))
