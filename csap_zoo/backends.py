"""Where ``Segmenter`` runs a Segmentor's network: PyTorch (the default) or OpenVINO.

``OpenVINONetwork`` maps a normalised (B, 3, H, W) batch to the model's native logits, what
``model(x, upsample=False, crop=False)`` returns, with OpenVINO on the CPU:

- the PyTorch module is converted with ``openvino.convert_model`` (traced; no ONNX file in between) once per input
  shape, and compiled with the latency hint, f32 inference precision and a pinned thread count;
- converted models are cached on disk as OpenVINO IR, ``<cache>/openvino/<key>/model.{xml,bin}``, published
  atomically; the key hashes the weights, the model's config, the input shape and the csap-zoo, torch and OpenVINO
  versions, so a later process with the same model and shape skips the conversion (the slow part: seconds per
  shape), and changed weights never load a stale graph. ``<cache>`` is ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``;
- compiled models are kept in memory per shape (the most recent ``max_shapes``).

PyTorch stays the default: it needs no extra package and no conversion per input shape, and slide windows, several
views and autocast work the same on every device. OpenVINO is the faster CPU network where it is installed
(``benchmarks/runtimes.py`` measures both).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .errors import UsageError
from .fileio import atomic_folder
from .settings import cache_dir as default_cache_dir
from .version import __version__

__all__ = ["BACKENDS", "OPENVINO_CPU_CONFIG", "OpenVINONetwork", "check_backend"]

BACKENDS = ("torch", "openvino")
# How OpenVINO compiles for the CPU here: one latency-oriented stream, no down-casting below f32
OPENVINO_CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
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


class _NativeLogits(nn.Module):
    """The Segmentor's network up to its native (stride-8) logits of the whole prepared input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, upsample=False, crop=False)


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256(repr(getattr(model, "config", type(model).__name__)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


class OpenVINONetwork:
    """A Segmentor's network in OpenVINO (CPU): ``network(x)`` -> native logits as a float32 torch tensor.

    Args:
        model: the Segmentor (in eval mode; it is not modified).
        threads: inference threads (default: ``torch.get_num_threads()``).
        cache_dir: the cache root for converted models (default ``CSAP_ZOO_CACHE`` or ``~/.cache/csap_zoo``);
            ``False`` converts in memory only.
        max_shapes: compiled input shapes kept in memory.
    """

    def __init__(self, model: nn.Module, threads: Optional[int] = None,
                 cache_dir: Union[PathLike, None, bool] = None, max_shapes: int = 8) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        self._ov = _import_openvino()
        self.model = model.eval()
        self.threads = threads or torch.get_num_threads()
        self.cache_root = None if cache_dir is False else Path(cache_dir or default_cache_dir()) / "openvino"
        self.max_shapes = max(1, int(max_shapes))
        self._core = self._ov.Core()
        self._compiled: "OrderedDict[tuple, Any]" = OrderedDict()
        self._digest: Optional[str] = None
        self.conversions = 0  # how many shapes were converted here (not read from the cache)

    def cache_key(self, shape: tuple) -> str:
        """The on-disk key of the converted model for an input ``shape``."""
        if self._digest is None:
            self._digest = _weights_digest(self.model)
        versions = f"{__version__}|{torch.__version__}|{self._ov.get_version()}"
        return hashlib.sha256(f"{self._digest}|{tuple(shape)}|{versions}".encode()).hexdigest()[:32]

    def _convert(self, shape: tuple) -> Any:
        example = torch.zeros(shape, dtype=torch.float32)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed per converted model
            converted = self._ov.convert_model(_NativeLogits(self.model), example_input=example)
        self.conversions += 1
        return converted

    def _model_for(self, shape: tuple) -> Any:
        if self.cache_root is None:
            return self._convert(shape)
        folder = self.cache_root / self.cache_key(shape)
        xml = folder / "model.xml"
        if xml.is_file() and (folder / "model.bin").is_file():
            try:
                return self._core.read_model(str(xml))
            except RuntimeError:  # unreadable (another OpenVINO's format): convert again and replace it
                pass
        converted = self._convert(shape)
        try:
            with atomic_folder(folder) as staging:
                self._ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        except OSError:  # a read-only or full cache only costs the next process a conversion
            pass
        return converted

    def compiled(self, shape: tuple) -> Any:
        """The compiled model for an input shape (B, C, H, W), converting or reading it from the cache once."""
        shape = tuple(int(s) for s in shape)
        found = self._compiled.get(shape)
        if found is None:
            config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": self.threads}
            found = self._core.compile_model(self._model_for(shape), "CPU", config)
            self._compiled[shape] = found
            while len(self._compiled) > self.max_shapes:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(shape)
        return found

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UsageError("backend='openvino' runs on the CPU; use backend='torch' for other devices")
        compiled = self.compiled(tuple(x.shape))
        result = compiled(np.ascontiguousarray(x.detach().float().numpy()))[0]
        return torch.from_numpy(np.array(result, dtype=np.float32, copy=True))
