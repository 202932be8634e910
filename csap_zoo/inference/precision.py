"""Numeric precision of inference, and what this CPU can do about it.

``precision`` names what the network computes in:

- ``"fp32"``: float32 everywhere (the reference);
- ``"bf16"``: bfloat16 matrix work. PyTorch on the CPU runs a bfloat16 copy of the (fused, channels_last) model,
  cast once; under autocast the weights would be cast again on every call, which costs more than bf16 saves.
  OpenVINO compiles the float32 graph with ``INFERENCE_PRECISION_HINT=bf16``. On CUDA, autocast. It needs bf16
  instructions on the CPU (AVX-512 BF16 or AMX); without them both libraries would emulate bf16, slower than fp32,
  so asking for it there is an error;
- ``"fp16"``: float16 autocast, CUDA only;
- ``"int8"``: post-training quantization of the OpenVINO graph (NNCF), calibrated on the user's images.

The CPU's model name and the flags that decide these paths (:func:`cpu_info`) are also what the benchmarks record
with every result, since the machines they run on change.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from ..constants import PRECISIONS
from ..errors import UsageError

__all__ = ["CPU_FLAGS", "PRECISIONS", "CpuInfo", "check_precision", "cpu_info", "torch_dtype"]

# The /proc/cpuinfo flags that decide which precision pays off (vector width, int8 and bf16 dot products, AMX tiles)
CPU_FLAGS: Tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, its logical core count and which of :data:`CPU_FLAGS` it has."""

    model: str
    cores: int
    flags: Tuple[str, ...]

    @property
    def bf16(self) -> bool:
        """Whether it has bfloat16 dot-product instructions (AVX-512 BF16 or AMX-BF16)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    def describe(self) -> str:
        """One line: ``AMD EPYC (2 cores; avx2 avx512f avx512_vnni avx512_bf16)``."""
        return f"{self.model} ({self.cores} cores; {' '.join(self.flags) or 'no AVX2'})"

    def to_dict(self) -> Dict[str, object]:
        return {"model": self.model, "cores": self.cores, "flags": list(self.flags), "bf16": self.bf16,
                "amx": self.amx}


def _read_cpuinfo(path: str) -> Tuple[str, set]:
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


@functools.lru_cache(maxsize=None)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """The CPU this process runs on (Linux reads ``/proc/cpuinfo``; elsewhere the flags come from PyTorch's
    oneDNN check, which reports bf16 only where it is fast)."""
    model, flags = _read_cpuinfo(path)
    if not flags and platform.system() != "Linux":
        mkldnn = getattr(torch.ops, "mkldnn", None)
        if mkldnn is not None and hasattr(mkldnn, "_is_mkldnn_bf16_supported") and \
                mkldnn._is_mkldnn_bf16_supported():
            flags = {"avx512_bf16"} if platform.machine().lower() in ("x86_64", "amd64") else {"amx_bf16"}
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown", os.cpu_count() or 1,
                   tuple(flag for flag in CPU_FLAGS if flag in flags))


def check_precision(precision: str, device: torch.device, backend: str) -> str:
    """``precision`` if this device and backend can run it, else one :class:`UsageError` saying what can.

    ``backend`` is the resolved one (``"torch"`` or ``"openvino"``)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("precision='fp16' runs on CUDA only; on the CPU use precision='bf16' (where the CPU has "
                         "bf16 instructions) or 'fp32'")
    if precision == "int8" and backend != "openvino":
        raise UsageError("precision='int8' runs on the OpenVINO backend (quantized with NNCF): use "
                         "backend='openvino' or 'auto' on the CPU with openvino installed")
    if precision == "bf16" and device.type == "cpu" and not cpu_info().bf16:
        raise UsageError(f"precision='bf16' needs bf16 instructions (AVX-512 BF16 or AMX), and this CPU has neither: "
                         f"{cpu_info().describe()}. bf16 would be emulated there, slower than fp32: use "
                         f"precision='fp32' (or 'int8' with OpenVINO)")
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype a reduced ``precision`` computes in (float32 for ``"fp32"``)."""
    return _DTYPES.get(precision, torch.float32)
