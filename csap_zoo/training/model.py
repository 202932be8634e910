"""The model a training config describes: its architecture, initial weights (from scratch, ImageNet, a file or a
zoo checkpoint of the same architecture), the dataset's class count and the data config the exports carry."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict

from ..data.metadata import DatasetInfo
from ..models.segmentor import DataConfig, Segmentor
from .config import TrainConfig

__all__ = ["build_model"]


def build_model(config: TrainConfig, info: DatasetInfo) -> Segmentor:
    """A Segmentor for ``config`` with ``info.num_classes`` classes (a pretrained classifier of another class count
    is re-initialised) whose ``data_config`` names the training set's classes, palette and normalisation."""
    from ..hub import create_model

    num_classes = info.num_classes
    kwargs: Dict[str, Any] = dict(config.model_kwargs)
    if config.backbone_args:
        kwargs["backbone_args"] = dict(config.backbone_args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*classifier is re-initialised.*")
        if config.init == "scratch":
            model = create_model(config.model, num_classes=num_classes, **kwargs)
        elif config.init == "imagenet":
            model = create_model(config.model, pretrained=True, num_classes=num_classes, **kwargs)
        elif Path(config.init).exists():
            model = create_model(config.model, pretrained=config.init, num_classes=num_classes, **kwargs)
        else:
            arch = config.init.split(".", 1)[0]
            if arch != config.model:
                raise ValueError(f"init={config.init!r} is a {arch} checkpoint but model={config.model!r}; set model "
                                 f"to {arch!r} or choose another checkpoint")
            model = create_model(config.init, pretrained=True, num_classes=num_classes, **kwargs)
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    model.data_config = DataConfig(
        mean=tuple(config.mean), std=tuple(config.std), train_crop=tuple(config.crop_size),
        test_size=tuple(config.test_size) if config.test_size else None, dataset=info.name,
        class_names=list(info.class_names), palette=[tuple(c) for c in info.palette],
    )
    if model.config is not None:
        model.config.dataset = None
    return model
