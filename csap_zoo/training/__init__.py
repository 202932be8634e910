"""Training: ``TrainConfig`` (+ presets) and ``train``; the trainer handles AMP, DDP, checkpoints and resume.

Modules: ``config`` (TrainConfig, presets, YAML/JSON), ``optim`` (parameter groups), ``distributed`` (process group),
``checkpoint`` (iter_<N>.pt files), ``trainer`` (the loop).
"""
from .config import PRESETS, TrainConfig, get_preset, list_presets, load_config, read_classes_file
from .trainer import TrainResult, Trainer, load_training_checkpoint, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "get_preset", "list_presets", "load_config",
           "load_training_checkpoint", "read_classes_file", "train"]
