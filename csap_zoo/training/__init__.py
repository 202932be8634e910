"""Training: ``TrainConfig`` (+ presets) and ``train``; the trainer handles AMP, DDP, checkpoints and resume.

Modules: ``config`` (TrainConfig, presets, YAML/JSON), ``optim`` (parameter groups), ``distributed`` (process group),
``checkpoint`` (iter_<N>.pt files), ``trainer`` (the loop). The trainer (with torch.distributed and the data
loaders) loads on first use of its names, so reading a config or listing presets stays cheap.
"""
from typing import Any

from .config import PRESETS, TrainConfig, get_preset, list_presets, load_config

_TRAINER_API = ("TrainResult", "Trainer", "load_training_checkpoint", "train")


def __getattr__(name: str) -> Any:
    if name in _TRAINER_API:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "get_preset", "list_presets", "load_config",
           "load_training_checkpoint", "train"]
