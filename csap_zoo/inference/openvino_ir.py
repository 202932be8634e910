"""A Segmentor's network as an OpenVINO model: converted once for every input size, quantized to int8 on request,
and cached on disk.

- **Conversion.** The network (padding policy, backbone, head: the raw logits of the whole prepared input, what
  ``model(x, upsample=False, crop=False)`` returns) is converted with a dynamic batch, height and width by
  ``openvino.convert_model`` (~6 s for CSAP-T), so one conversion serves a folder of mixed image sizes. (torch's
  dynamo ONNX exporter read by OpenVINO's ONNX frontend gives a graph of the same speed after ~25 s, and needs
  onnx and onnxscript: it is not used.)
- **int8.** :func:`quantize` runs NNCF's post-training quantization on the converted model with calibration
  inputs the caller provides (normalised images of the user's data); the result is cached like a conversion, its
  key extended by a digest of the calibration inputs and the quantization settings.
- **Cache.** ``<cache>/openvino/<key>/model.{xml,bin}`` plus ``entry.json``, published atomically
  (``entry.json`` last). The key hashes what determines the graph: the weights, the model's config, the source
  code of every module class in the model (csap-zoo's, timm's, yours: an edited checkout at the same version gets
  a new key) and the csap-zoo, torch and OpenVINO versions (plus, for int8, the calibration digest and NNCF's
  version). ``entry.json`` records the key and the sha256 and size of both files;
  every load checks them, so a damaged file, a half-copied entry or another model's files placed there are
  converted again with a warning, never run. ``<cache>`` is ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import UsageError
from ..fileio import atomic_folder
from ..models.logits import SegmentorLogits
from ..version import __version__

__all__ = ["IRCache", "calibration_digest", "convert_network", "import_nncf", "import_openvino", "int8_key",
           "network_key", "quantize"]

# How NNCF quantizes here (part of the int8 cache key): mixed preset (symmetric weights, asymmetric activations),
# the last classifier convolution left in float (it decides the arg-max), fast bias correction
QUANTIZATION_SETTINGS = "mixed|fast_bias_correction|float_classifier|v1"


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UsageError("backend='openvino' needs the openvino package (pip install openvino); backend='torch' "
                         "needs nothing more") from None
    return openvino


def import_nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise UsageError("precision='int8' quantizes with NNCF: pip install 'csap-zoo[int8]' (or pip install nncf)"
                         ) from None
    return nncf


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


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


def network_key(model: nn.Module, openvino_version: str) -> str:
    """The cache key of a model's converted (float32, dynamic-shape) network."""
    versions = "|".join([__version__, torch.__version__, openvino_version])
    text = f"{_weights_digest(model)}|{_code_digest(model)}|dynamic|{versions}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def calibration_digest(inputs: Sequence[np.ndarray]) -> str:
    """sha256 over the calibration inputs (shapes and bytes), in order."""
    digest = hashlib.sha256(f"{len(inputs)}".encode())
    for array in inputs:
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(f"{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def int8_key(base_key: str, inputs: Sequence[np.ndarray]) -> str:
    """The cache key of the int8 model quantized from the network ``base_key`` with these calibration inputs."""
    text = f"{base_key}|int8|{calibration_digest(inputs)}|{QUANTIZATION_SETTINGS}|{_package_version('nncf')}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def convert_network(ov: Any, model: nn.Module, upsample: bool = False) -> Any:
    """The model's network as an OpenVINO model with a dynamic batch, height and width: the raw logits of the whole
    prepared input, or (``upsample``) the logits at the input's resolution, what ``model(x)`` returns."""
    in_chans = int(getattr(model, "in_chans", 3))
    side = max(64, int(getattr(model, "min_size", 32)))
    module = SegmentorLogits(model, upsample=upsample, crop=upsample, branch_free=True).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the example's sizes: the padding has no size branch
        return ov.convert_model(module, example_input=torch.zeros(1, in_chans, side, side),
                                input=[ov.PartialShape([-1, in_chans, -1, -1])])


def _classifier_names(network: Any) -> list:
    """The names of the convolutions whose output is the network's result (the classifier): left in float, since
    they decide the arg-max and hold a tiny share of the work."""
    found = []
    for result in network.get_results():
        node = result.input_value(0).get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.get_input_size():
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Add":  # the bias add after the classifier's convolution
            for index in range(node.get_input_size()):
                producer = node.input_value(index).get_node()
                if producer.get_type_name() == "Convolution":
                    found.append(producer.get_friendly_name())
        elif node.get_type_name() == "Convolution":
            found.append(node.get_friendly_name())
    return found


def quantize(network: Any, inputs: Sequence[np.ndarray]) -> Any:
    """The network quantized to int8 by NNCF, with activation ranges from ``inputs`` (normalised (1, C, H, W)
    float32 arrays of the user's images)."""
    nncf = import_nncf()
    if not inputs:
        raise UsageError("precision='int8' needs calibration images (pass calibration=[...] or --calibration)")
    names = _classifier_names(network)
    scope = nncf.IgnoredScope(names=names, validate=False) if names else None
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)  # its per-node notes and progress bars are not the user's business
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return nncf.quantize(network, nncf.Dataset(list(inputs)), preset=nncf.QuantizationPreset.MIXED,
                                 subset_size=len(inputs), fast_bias_correction=True, ignored_scope=scope)
    finally:
        logger.setLevel(level)


def _file_record(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


class IRCache:
    """OpenVINO models on disk under ``root`` (None: nothing is stored), one verified entry per key."""

    def __init__(self, root: Optional[Path], ov: Any, core: Any) -> None:
        self.root = root
        self._ov = ov
        self._core = core

    def load(self, key: str) -> Any:
        """The entry's model if ``entry.json`` vouches for both files (key, sizes, sha256), else None; a present but
        bad entry is reported with a warning (the caller then builds it again and replaces it)."""
        if self.root is None:
            return None
        folder = self.root / key
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
                      f"replacing it", stacklevel=4)
        return None

    def store(self, key: str, model: Any) -> None:
        """Publish ``model`` under ``key`` atomically; a read-only or full cache only costs a later conversion."""
        if self.root is None:
            return
        try:
            with atomic_folder(self.root / key, names=["model.xml", "model.bin", "entry.json"]) as staging:
                self._ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
                files = {name: _file_record((staging / name).read_bytes()) for name in ("model.xml", "model.bin")}
                (staging / "entry.json").write_text(json.dumps({"key": key, "files": files}, indent=1))
        except OSError:
            pass

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        """The cached model of ``key``, else ``build()`` stored under it and read back, so that the process that
        builds it runs the same bytes as every later one (a model straight from NNCF can round a few near-tied
        pixels differently from its saved form)."""
        found = self.load(key)
        if found is None:
            built = build()
            self.store(key, built)
            found = self.load(key) if self.root is not None and (self.root / key).exists() else None
            found = built if found is None else found
        return found
