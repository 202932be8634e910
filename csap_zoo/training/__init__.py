"""Training: ``TrainConfig`` (+ presets) and ``train``; the trainer handles AMP, DDP, checkpoints and resume.

Modules: ``config`` (TrainConfig, presets, YAML/JSON), ``data`` (datasets, their check, the loader), ``model`` (the
model a config describes), ``optim`` (parameter groups, LR schedule, AMP dtype), ``checkpoint`` (iter_<N>.pt files,
resume and retention), ``history`` (log.jsonl), ``trainer`` (the loop; its process group is
``csap_zoo.distributed``'s, which eval and predict share). The trainer and checkpoints (with torch) load on first use
of their names, so reading a config or listing presets stays cheap.
"""
import importlib
from typing import Any

from .config import PRESETS, TrainConfig, get_preset, list_presets, load_config

# name -> the module (loaded on first use) that defines it
_LAZY = {"TrainResult": "trainer", "Trainer": "trainer", "train": "trainer", "load_training_checkpoint": "checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "get_preset", "list_presets", "load_config",
           "load_training_checkpoint", "train"]
