"""Training configuration: one dataclass, presets for the paper's recipe, YAML/JSON round trips.

``TrainConfig`` holds everything a run needs. ``batch_size`` is the *global* batch of one optimiser step; each
process gets ``batch_size / (world_size * accum_steps)`` images per micro-step, so a preset means the same recipe on
any number of GPUs.

Presets (``get_preset(name)``): ``ade20k``, ``cityscapes``, ``cocostuff`` follow REFERENCE section 5 (MMSegmentation's
SegNeXt recipe); ``shapes-demo`` trains the bundled demo checkpoint on the generated shapes dataset in minutes on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..models.segmentor import IMAGENET_MEAN_255, IMAGENET_STD_255

__all__ = ["PRESETS", "TrainConfig", "get_preset", "list_presets", "load_config", "read_classes_file"]

PathLike = Union[str, os.PathLike]
_TUPLE_FIELDS = ("crop_size", "scale", "ratio_range", "betas", "mean", "std", "test_size", "eval_crop_size",
                 "eval_stride")


@dataclass
class TrainConfig:
    """A training run.

    Model and initialisation:
        model: architecture (``csap_tiny``, ``segnext_small``, ...).
        init: ``"imagenet"`` (the architecture's ImageNet backbone, fresh head), ``"scratch"``, a zoo checkpoint
            name (``csap_tiny.ade20k``: its weights, classifier re-initialised for the new classes), or a local
            checkpoint file / save_pretrained folder.
        model_kwargs: head options (``dropout``, ``attention``, ...); backbone_args: timm backbone options.

    Data:
        dataset: ``ade20k``, ``cityscapes``, ``cocostuff`` or ``folder``.
        data_root: dataset root; for ``folder`` it holds ``train/{images,masks}``, ``val/{images,masks}`` and
            (unless ``classes_file`` is given) ``classes.txt``.
        train_images/train_masks/val_images/val_masks: explicit folders for ``folder`` (override data_root's).
        classes_file: one class per line, ``name`` or ``name R G B`` (palette optional).
        dataset_name: name recorded with a ``folder`` dataset's model (default ``custom``).
        ignore_index, reduce_zero_label: label conventions of ``folder`` data.
        validate: check every image and mask before training (``"full"``) or only pairing (``"pairs"``).

    Pipeline (section 5): crop_size, scale (long, short) x ratio_range, cat_max_ratio, flip_prob, photometric,
    mean/std (0-255). Evaluation: test_size (keep-ratio resize, or None), eval_mode whole/slide, eval_crop_size,
    eval_stride.

    Optimisation: AdamW(lr, betas, weight_decay), head_lr_mult for ``decode_head.*``, no decay on norms, biases
    and layer scales; linear warmup for warmup_iters from warmup_ratio, then poly(power) to min_lr; amp
    ``"auto"`` (bf16 on CUDA when supported, else fp16 with a grad scaler; off on CPU), ``"bf16"``, ``"fp16"``,
    ``"none"``; accum_steps micro-steps per optimiser step; clip_grad (max grad norm) or None.

    Run: max_iters, eval_interval, checkpoint_interval, log_interval (0 = never), keep_checkpoints,
    out_dir, seed, resume (None, ``"auto"`` = the out_dir's last checkpoint if any, or a checkpoint path),
    device (``"auto"``, ``"cpu"``, ``"cuda"``), num_workers, pin_memory (None = on with CUDA), sync_bn,
    progress (bar on rank 0), tensorboard (when installed), export (save_pretrained into ``out_dir/final``).
    """

    # model
    model: str = "csap_tiny"
    init: str = "imagenet"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_args: Dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "folder"
    data_root: Optional[str] = None
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    train_images: Optional[str] = None
    train_masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    classes_file: Optional[str] = None
    dataset_name: Optional[str] = None
    ignore_index: int = 255
    reduce_zero_label: bool = False
    validate: str = "full"
    # pipeline
    crop_size: Tuple[int, int] = (512, 512)
    scale: Optional[Tuple[int, int]] = (2048, 512)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: Tuple[float, float, float] = IMAGENET_MEAN_255
    std: Tuple[float, float, float] = IMAGENET_STD_255
    # evaluation
    test_size: Optional[Tuple[int, int]] = (2048, 512)
    eval_mode: str = "whole"
    eval_crop_size: Optional[Tuple[int, int]] = None
    eval_stride: Optional[Tuple[int, int]] = None
    # optimisation
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 6e-5
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    amp: str = "auto"
    clip_grad: Optional[float] = None
    # run
    max_iters: int = 160_000
    eval_interval: int = 16_000
    checkpoint_interval: int = 16_000
    log_interval: int = 50
    keep_checkpoints: int = 1
    out_dir: str = "runs/train"
    seed: int = 0
    resume: Optional[str] = None
    device: str = "auto"
    num_workers: int = 4
    pin_memory: Optional[bool] = None
    sync_bn: bool = False
    progress: bool = True
    tensorboard: bool = True
    export: bool = True

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, tuple(value))
            elif isinstance(value, int) and name in ("crop_size", "eval_crop_size", "eval_stride"):
                setattr(self, name, (value, value))
        self.check()

    def check(self) -> None:
        """Raise ValueError for inconsistent settings."""
        def positive(name: str) -> None:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("batch_size", "accum_steps", "max_iters", "keep_checkpoints"):
            positive(name)
        for name in ("eval_interval", "checkpoint_interval", "log_interval", "warmup_iters", "num_workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer (0 = never/none), got {getattr(self, name)!r}")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if self.dataset not in ("ade20k", "cityscapes", "cocostuff", "folder"):
            raise ValueError(f"dataset must be ade20k, cityscapes, cocostuff or folder, got {self.dataset!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if self.eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be whole or slide, got {self.eval_mode!r}")
        if self.validate not in ("full", "pairs"):
            raise ValueError(f"validate must be 'full' or 'pairs', got {self.validate!r}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width), got {self.crop_size!r}")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {self.ratio_range!r}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
        if self.lr <= 0 or self.weight_decay < 0 or self.head_lr_mult <= 0:
            raise ValueError("lr and head_lr_mult must be positive and weight_decay non-negative")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive or None, got {self.clip_grad}")

    # ------------------------------------------------------------------ round trips
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        """Build from a dict; an optional ``preset`` key starts from that preset. Unknown keys are an error."""
        values = dict(data)
        preset = values.pop("preset", None)
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid options: {sorted(valid)}")
        base = get_preset(preset).to_dict() if preset else {}
        base.update(values)
        return cls(**base)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: PathLike) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_config(path: PathLike) -> TrainConfig:
    """Read a YAML or JSON config file (a ``preset: NAME`` key fills in the rest from that preset)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError
        raise ValueError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    return TrainConfig.from_dict(data)


def read_classes_file(path: PathLike) -> Tuple[List[str], Optional[List[Tuple[int, int, int]]]]:
    """Class names (and palette, if every line has one) from a classes file.

    Lines are ``name`` or ``name R G B`` (names may contain spaces); blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classes file {path} does not exist")
    names: List[str] = []
    colours: List[Optional[Tuple[int, int, int]]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        colour = None
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            colour = tuple(int(p) for p in parts[-3:])
            if max(colour) > 255:
                raise ValueError(f"{path}:{number}: colour {colour} is outside 0..255")
            parts = parts[:-3]
        names.append(" ".join(parts))
        colours.append(colour)  # type: ignore[arg-type]
    if not names:
        raise ValueError(f"classes file {path} lists no classes")
    if all(c is not None for c in colours):
        return names, colours  # type: ignore[return-value]
    if any(c is not None for c in colours):
        raise ValueError(f"{path}: give a colour on every line or on none")
    return names, None


_RECIPE = dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01, head_lr_mult=10.0, warmup_iters=1500,
               warmup_ratio=1e-6, poly_power=1.0, min_lr=0.0, cat_max_ratio=0.75, flip_prob=0.5, photometric=True,
               ratio_range=(0.5, 2.0), init="imagenet")

PRESETS: Dict[str, Dict[str, Any]] = {
    # ADE20K: 512x512 crops of (2048, 512) x [0.5, 2], batch 16, 160k iterations; eval resize (2048, 512), whole
    "ade20k": dict(_RECIPE, dataset="ade20k", crop_size=(512, 512), scale=(2048, 512), batch_size=16,
                   max_iters=160_000, eval_interval=16_000, checkpoint_interval=16_000, test_size=(2048, 512),
                   eval_mode="whole"),
    # Cityscapes: 1024x1024 crops of (2048, 1024) x [0.5, 2], 160k; slide eval 1024 / 768 at native size.
    # Batch 8 (one image per GPU on 8 GPUs, as in MetaSeg's Cityscapes setting) is our reading.
    "cityscapes": dict(_RECIPE, dataset="cityscapes", crop_size=(1024, 1024), scale=(2048, 1024), batch_size=8,
                       max_iters=160_000, eval_interval=16_000, checkpoint_interval=16_000, test_size=None,
                       eval_mode="slide", eval_crop_size=(1024, 1024), eval_stride=(768, 768)),
    # COCO-Stuff-164K: as ADE20K with 80k iterations
    "cocostuff": dict(_RECIPE, dataset="cocostuff", crop_size=(512, 512), scale=(2048, 512), batch_size=16,
                      max_iters=80_000, eval_interval=8_000, checkpoint_interval=8_000, test_size=(2048, 512),
                      eval_mode="whole"),
    # The bundled demo (csap_tiny.shapes): from scratch (works offline) on generated 128x128 shapes images.
    "shapes-demo": dict(dataset="folder", dataset_name="shapes", data_root="data/shapes", model="csap_tiny",
                        init="scratch", crop_size=(96, 96), scale=(128, 128), ratio_range=(0.75, 1.5),
                        cat_max_ratio=1.0, flip_prob=0.5, photometric=True, batch_size=8, lr=2e-3,
                        head_lr_mult=1.0, weight_decay=0.01, warmup_iters=50, warmup_ratio=1e-3, max_iters=1000,
                        eval_interval=250, checkpoint_interval=250, log_interval=20, test_size=(128, 128),
                        eval_mode="whole", num_workers=1, out_dir="runs/shapes-demo"),
}


def list_presets() -> List[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> TrainConfig:
    """The config of a named preset (``ade20k``, ``cityscapes``, ``cocostuff``, ``shapes-demo``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    return TrainConfig(**dataclasses.replace(TrainConfig(), **PRESETS[name]).to_dict())
