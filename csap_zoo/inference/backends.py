"""Where ``Segmenter`` runs a Segmentor's network: PyTorch (the default) or OpenVINO.

``OpenVINONetwork`` maps a normalised (B, 3, H, W) batch to the model's native logits, what
``model(x, upsample=False, crop=False)`` returns, with OpenVINO on the CPU:

- the PyTorch module is exported to ONNX (torch's dynamo exporter, static shape, in a temporary folder) and read by
  OpenVINO's ONNX frontend once per input shape -- that graph runs ~14% faster on the CPU than the one
  ``openvino.convert_model`` traces from the module, which is the route where onnx / onnxscript are missing --
  and compiled with the latency hint, f32 inference precision and a pinned thread count;
- :meth:`OpenVINONetwork.label_map` appends the bilinear resizes (align_corners=False, cropped) and the arg-max over
  classes to the network's graph, so that the label map comes out of OpenVINO in one call: its resize + arg-max
  kernels are several times faster than the banded torch post-processing when the logits are noise-like. The
  labels equal the torch post-processing's except where two classes tie to float rounding; the intermediate
  full-size scores live inside OpenVINO, so this is used only up to ``LABEL_GRAPH_MAX_BYTES`` of them;
- converted models are cached on disk as OpenVINO IR, ``<cache>/openvino/<key>/model.{xml,bin}`` plus
  ``entry.json``, published atomically (``entry.json`` last); the key hashes what determines the graph: the
  weights, the model's config, the source code of every module class in the model (csap-zoo's, timm's, yours: an
  edited checkout at the same version gets a new key), the input shape, the route and the csap-zoo, torch,
  OpenVINO, onnx and onnxscript versions. ``entry.json`` records the key and the sha256 and size of both files; every
  load checks them, so a damaged file, a half-copied entry or another model's files placed there are converted
  again with a warning, never run. A later process with the same model and shape skips the conversion (seconds
  per shape). ``<cache>`` is ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``;
- compiled models are kept in memory per shape (the most recent ``max_shapes``).

PyTorch stays the default: it needs no extra package and no conversion per input shape, and slide windows, several
views and autocast work the same on every device. OpenVINO is the faster CPU network where it is installed
(``benchmarks/runtimes.py`` measures both).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..constants import BACKENDS
from ..errors import UsageError
from ..fileio import atomic_folder
from ..models.logits import SegmentorLogits
from ..settings import cache_dir as default_cache_dir
from ..version import __version__
from .bands import ResizeStep, label_dtype

__all__ = ["LABEL_GRAPH_MAX_BYTES", "OPENVINO_CPU_CONFIG", "OpenVINONetwork", "check_backend",
           "label_map_graph"]

# How OpenVINO compiles for the CPU here: one latency-oriented stream, no down-casting below f32
OPENVINO_CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
# Largest full-size float32 score map (classes x H x W) a label-map graph may hold inside OpenVINO (which keeps its
# buffers per compiled model); bigger maps take the banded torch post-processing instead.
LABEL_GRAPH_MAX_BYTES = 256 * 2 ** 20
PathLike = Union[str, "os.PathLike[str]"]


def check_backend(backend: str) -> str:
    """The backend name, or one error listing the valid ones."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UsageError("backend='openvino' needs the openvino package: pip install openvino (or the project's "
                         "[bench] extra); backend='torch' needs nothing more") from None
    return openvino


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256(repr(getattr(model, "config", type(model).__name__)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


_CODE_DIGESTS: dict = {}


def _code_digest(model: nn.Module) -> str:
    """sha256 over the source files of the classes the model is built from (and of this module and the wrapper it
    converts through, which build the graph): what decides the converted graph besides the weights."""
    files = {os.path.abspath(__file__), os.path.abspath(inspect.getsourcefile(SegmentorLogits))}
    for module in model.modules():
        try:
            files.add(os.path.abspath(inspect.getsourcefile(type(module)) or ""))
        except TypeError:  # a class without a source file (built in)
            continue
    files.discard(os.path.abspath(""))
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in _CODE_DIGESTS:
            with open(path, "rb") as handle:
                _CODE_DIGESTS[key] = hashlib.sha256(handle.read()).hexdigest()
        digest.update(f"{path}|{_CODE_DIGESTS[key]}\n".encode())
    return digest.hexdigest()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _file_record(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _onnx_exporter_available() -> bool:
    """Whether torch's dynamo ONNX exporter can run (it needs onnx and onnxscript)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def label_map_graph(ov: Any, network: Any, steps: Sequence[ResizeStep], num_classes: int) -> Any:
    """``network`` (native logits; modified in place: pass a clone) followed by the resizes of ``steps`` and the
    arg-max over classes, its output now the (B, H, W) label map."""
    ops = ov.opset13
    logits = network.get_results()[0]
    node = logits.input_value(0)
    for step in steps:
        if tuple(step.in_size) != tuple(step.out_size):
            node = ops.interpolate(
                node, ops.constant(np.array(step.out_size, dtype=np.int64)), mode="linear_onnx",
                shape_calculation_mode="sizes", coordinate_transformation_mode="pytorch_half_pixel",
                axes=ops.constant(np.array([2, 3], dtype=np.int64))).output(0)
        if step.kept != tuple(step.out_size):
            node = ops.slice(node, np.array([0, 0], dtype=np.int64), np.array(step.kept, dtype=np.int64),
                             np.array([1, 1], dtype=np.int64), axes=np.array([2, 3], dtype=np.int64)).output(0)
    # TopK-11 (the first with a stable order of equal values): ties go to the lower class index. For k=1 the sort
    # mode changes nothing but the kernel: sorting by value with stable=True is ~5x slower than by index.
    labels = ov.opset11.topk(node, np.array(1, dtype=np.int64), axis=1, mode="max", sort="index",
                             index_element_type="i32", stable=True).output(1)
    labels = ops.squeeze(labels, np.array([1], dtype=np.int64))
    labels = ops.convert(labels, "u8" if label_dtype(num_classes) == np.uint8 else "i32")
    network.add_results([ops.result(labels)])
    network.remove_result(logits)  # the graph's only output is now the label map
    network.validate_nodes_and_infer_types()
    return network


class OpenVINONetwork:
    """A Segmentor's network in OpenVINO (CPU): ``network(x)`` -> native logits as a float32 torch tensor, and
    ``network.label_map(x, steps)`` -> the label map of those logits resized through ``steps``.

    Args:
        model: the Segmentor (in eval mode; it is not modified).
        threads: inference threads (default: ``torch.get_num_threads()``).
        cache_dir: the cache root for converted models (default ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``);
            ``False`` converts in memory only.
        max_shapes: compiled networks (one per input shape) kept in memory.
        max_label_graphs: compiled label-map graphs (input shape and resizes) kept in memory; each holds its
            full-size scores (up to ``LABEL_GRAPH_MAX_BYTES``) while it lives.
        route: how the module becomes an OpenVINO graph: ``"onnx"`` (torch's ONNX exporter, then OpenVINO's ONNX
            frontend: the faster graph), ``"trace"`` (``openvino.convert_model``), or ``None`` (onnx where onnx and
            onnxscript are installed, else trace).
    """

    ROUTES = ("onnx", "trace")

    def __init__(self, model: nn.Module, threads: Optional[int] = None,
                 cache_dir: Union[PathLike, None, bool] = None, max_shapes: int = 8,
                 route: Optional[str] = None, max_label_graphs: int = 2) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        if route is not None and route not in self.ROUTES:
            raise UsageError(f"route must be one of {list(self.ROUTES)} or None, got {route!r}")
        self._ov = _import_openvino()
        self.model = model.eval()
        self.threads = threads or torch.get_num_threads()
        self.cache_root = None if cache_dir is False else Path(cache_dir or default_cache_dir()) / "openvino"
        self.max_shapes = max(1, int(max_shapes))
        self.route = route or ("onnx" if _onnx_exporter_available() else "trace")
        self._core = self._ov.Core()
        self._compiled: "OrderedDict[tuple, Any]" = OrderedDict()
        self._label_graphs: "OrderedDict[tuple, Any]" = OrderedDict()
        self.max_label_graphs = max(1, int(max_label_graphs))
        self._networks: "OrderedDict[tuple, Any]" = OrderedDict()
        self._digest: Optional[str] = None
        self.conversions = 0  # how many shapes were converted here (not read from the cache)
        self.label_maps = 0  # how many label maps came out of a label-map graph

    def cache_key(self, shape: tuple) -> str:
        """The on-disk key of the converted model for an input ``shape``."""
        if self._digest is None:
            self._digest = f"{_weights_digest(self.model)}|{_code_digest(self.model)}"
        versions = "|".join([__version__, torch.__version__, self._ov.get_version(), self.route,
                             _package_version("onnx"), _package_version("onnxscript")])
        return hashlib.sha256(f"{self._digest}|{tuple(shape)}|{versions}".encode()).hexdigest()[:32]

    def _cached(self, folder: Path, key: str) -> Any:
        """The cache entry's model if ``entry.json`` vouches for both files (key, sizes, sha256), else None; a
        present but bad entry is reported with a warning (it is then converted again and replaced)."""
        xml, weights, record = folder / "model.xml", folder / "model.bin", folder / "entry.json"
        if not folder.exists():
            return None
        problem = None
        try:
            entry = json.loads(record.read_text())
            graph, data = xml.read_bytes(), weights.read_bytes()  # what is checked is what is run
            if not isinstance(entry, dict) or entry.get("key") != key:
                problem = "its entry.json belongs to another key"
            elif entry.get("files") != {"model.xml": _file_record(graph), "model.bin": _file_record(data)}:
                problem = "its model.xml / model.bin are not the files entry.json records (damaged or replaced)"
        except FileNotFoundError:
            problem = "it has no entry.json or is missing a file (written by an older csap-zoo, or cut short)"
        except (OSError, ValueError) as err:
            problem = f"its entry.json cannot be read ({type(err).__name__})"
        if problem is None:
            try:
                return self._core.read_model(graph.decode("utf-8"),
                                             self._ov.Tensor(np.frombuffer(data, dtype=np.uint8).copy()))
            except (RuntimeError, UnicodeDecodeError) as err:
                problem = f"OpenVINO cannot read it ({str(err).splitlines()[0][:200]})"
        warnings.warn(f"OpenVINO cache entry {folder} is not used: {problem}; converting the model again and "
                      f"replacing it", stacklevel=3)
        return None

    def _convert(self, shape: tuple) -> Any:
        example = torch.zeros(shape, dtype=torch.float32)
        module = SegmentorLogits(self.model, upsample=False, crop=False)  # native logits of the whole input
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / exporter notes: shapes are fixed per converted model
            if self.route == "onnx":
                with tempfile.TemporaryDirectory(prefix="csap_zoo_onnx_") as folder:
                    program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=18,
                                                input_names=["image"], output_names=["logits"], verbose=False)
                    path = os.path.join(folder, "model.onnx")
                    program.save(path)
                    converted = self._core.read_model(path)  # read whole: the folder goes away
            else:
                converted = self._ov.convert_model(module, example_input=example)
        self.conversions += 1
        return converted

    def _model_for(self, shape: tuple) -> Any:
        if self.cache_root is None:
            return self._convert(shape)
        key = self.cache_key(shape)
        folder = self.cache_root / key
        cached = self._cached(folder, key)
        if cached is not None:
            return cached
        converted = self._convert(shape)
        try:
            with atomic_folder(folder, names=["model.xml", "model.bin", "entry.json"]) as staging:
                self._ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
                files = {name: _file_record((staging / name).read_bytes()) for name in ("model.xml", "model.bin")}
                (staging / "entry.json").write_text(json.dumps({"key": key, "files": files}, indent=1))
        except OSError:  # a read-only or full cache only costs the next process a conversion
            pass
        return converted

    def network_model(self, shape: tuple) -> Any:
        """The uncompiled OpenVINO model of the network for an input shape (B, C, H, W): converted, or read from
        the cache, once (the most recent ``max_shapes`` are kept). Clone it before changing it."""
        found = self._networks.get(shape)
        if found is None:
            found = self._networks[shape] = self._model_for(shape)
            while len(self._networks) > self.max_shapes:
                self._networks.popitem(last=False)
        else:
            self._networks.move_to_end(shape)
        return found

    def _compile(self, key: tuple, build: Any, kept: "OrderedDict[tuple, Any]", limit: int) -> Any:
        found = kept.get(key)
        if found is None:
            config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": self.threads}
            found = kept[key] = self._core.compile_model(build(), "CPU", config)
            while len(kept) > limit:
                kept.popitem(last=False)
        else:
            kept.move_to_end(key)
        return found

    def compiled(self, shape: tuple) -> Any:
        """The compiled network for an input shape (B, C, H, W), converting or reading it from the cache once."""
        shape = tuple(int(s) for s in shape)
        return self._compile(shape, lambda: self.network_model(shape), self._compiled, self.max_shapes)

    @property
    def compiled_label_graphs(self) -> int:
        """How many compiled label-map graphs are held in memory now (at most ``max_label_graphs``)."""
        return len(self._label_graphs)

    def native_shape(self, shape: tuple) -> Tuple[int, ...]:
        """The shape of the native logits for an input shape (B, C, H, W)."""
        return tuple(int(d) for d in self.network_model(tuple(int(s) for s in shape)).output(0).get_shape())

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
        compiled = self._compile(
            (shape, steps), lambda: label_map_graph(self._ov, self.network_model(shape).clone(), steps, classes),
            self._label_graphs, self.max_label_graphs)
        result = compiled(np.ascontiguousarray(x.detach().float().numpy()))[0]
        self.label_maps += 1
        return np.array(result, copy=True)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.device.type != "cpu":
            raise UsageError("backend='openvino' runs on the CPU; use backend='torch' for other devices")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        compiled = self.compiled(tuple(x.shape))
        result = compiled(np.ascontiguousarray(x.detach().float().numpy()))[0]
        return torch.from_numpy(np.array(result, dtype=np.float32, copy=True))
