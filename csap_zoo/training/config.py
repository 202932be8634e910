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
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..constants import DATASET_LAYOUTS, HF_IMAGE_COLUMN, HF_MASK_COLUMN
from ..fileio import atomic_write
from ..models.registry import apply_head_overrides, get_architecture
from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from ..models.segmentor import MAX_IMAGE_SIZE, check_backbone_args
from ..validation import ConfigError, check_dataclass, describe, numbers_from_strings, option, require_mapping
from .optim import resolve_param_rules

__all__ = ["ConfigError", "PRESETS", "TrainConfig", "get_preset", "list_presets", "load_config"]

PathLike = Union[str, os.PathLike]
_TUPLE_FIELDS = ("crop_size", "scale", "ratio_range", "betas", "mean", "std", "test_size", "eval_crop_size",
                 "eval_stride")
_SQUARE_FIELDS = ("crop_size", "eval_crop_size", "eval_stride")  # one integer means (n, n)
DATASETS = DATASET_LAYOUTS
MAX_ITERS = 10 ** 9
MAX_CONFIG_BYTES = 16 * 2 ** 20
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


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
        dataset: ``ade20k``, ``cityscapes``, ``cocostuff``, ``folder`` or ``hf`` (a Hugging Face dataset).
        data_root: dataset root; for ``folder`` it holds ``train/{images,masks}``, ``val/{images,masks}`` and
            (unless ``classes_file`` is given) ``classes.txt``; for ``hf`` a Hub dataset id, a ``save_to_disk``
            folder or a folder of parquet files (``csap_zoo.data.hf_datasets``; splits ``train`` and
            ``validation``, classes from ``classes_file`` or a built-in ``dataset_name``).
        image_column/mask_column: the Image columns of an ``hf`` dataset (default ``image``, ``annotation``).
        train_split/val_split: split names (default: the dataset's, ``csap_zoo.data.DEFAULT_SPLITS``; for
            ``folder`` the subfolders of data_root, ``train`` and ``val``).
        train_images/train_masks/val_images/val_masks: explicit folders for ``folder`` (override data_root's).
        classes_file: one class per line, ``name`` or ``name R G B`` (palette optional; see
            ``csap_zoo.data.read_classes_file``).
        dataset_name: name recorded with a ``folder`` dataset's model (default ``custom``).
        ignore_index, reduce_zero_label: label conventions of ``folder`` and ``hf`` data.
        validate: check every image and mask before training (``"full"``) or only pairing (``"pairs"``).

    Pipeline (section 5): crop_size, scale (long, short) x ratio_range, cat_max_ratio, flip_prob, photometric,
    mean/std (0-255). Evaluation: test_size (keep-ratio resize, or None), eval_mode whole/slide, eval_crop_size,
    eval_stride.

    Optimisation: AdamW(lr, betas, weight_decay); param_rules picks each parameter's lr and decay: ``"mmseg"``
    (the official SegNeXt configs: names containing ``norm`` or ``pos_block`` without decay, ``head`` at
    head_lr_mult x lr), ``"no-decay-1d"`` (head at head_lr_mult x lr, no decay on any 1-D parameter, bias, norm
    or layer scale), or a list of ``{key, lr_mult, decay_mult}`` rules (see ``csap_zoo.training.optim``); linear
    warmup for warmup_iters from warmup_ratio, then poly(power) to min_lr; amp ``"auto"`` (bf16 on CUDA when supported, else fp16 with a grad scaler; off on CPU), ``"bf16"``, ``"fp16"``,
    ``"none"``; accum_steps micro-steps per optimiser step; clip_grad (max grad norm) or None.

    Run: max_iters, eval_interval, checkpoint_interval, log_interval (0 = never), keep_checkpoints,
    out_dir, seed, resume (None, ``"auto"`` = the out_dir's last checkpoint if any, or a checkpoint path),
    device (``"auto"``, ``"cpu"``, ``"cuda"``), num_workers, pin_memory (None = on with CUDA), sync_bn,
    progress (bar on rank 0), tensorboard (when installed), export (save_pretrained into ``out_dir/final``).
    """

    # model
    model: str = option("csap_tiny", max_chars=256)
    init: str = "imagenet"
    model_kwargs: Dict[str, Any] = option(factory=dict)
    backbone_args: Dict[str, Any] = option(factory=dict)
    # data
    dataset: str = option("folder", choices=DATASETS)
    data_root: Optional[str] = None
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    train_images: Optional[str] = None
    train_masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    classes_file: Optional[str] = None
    image_column: str = option(HF_IMAGE_COLUMN, max_chars=256)
    mask_column: str = option(HF_MASK_COLUMN, max_chars=256)
    dataset_name: Optional[str] = option(None, max_chars=256)
    ignore_index: int = option(255, 0, 65535)
    reduce_zero_label: bool = False
    validate: str = option("full", choices=("full", "pairs"))
    # pipeline
    crop_size: Tuple[int, int] = option((512, 512), 1, MAX_IMAGE_SIZE)
    scale: Optional[Tuple[int, int]] = option((2048, 512), 1, MAX_IMAGE_SIZE)
    ratio_range: Tuple[float, float] = option((0.5, 2.0), 0, 16, low_open=True)
    cat_max_ratio: float = option(0.75, 0, 1, low_open=True)
    flip_prob: float = option(0.5, 0, 1)
    photometric: bool = True
    mean: Tuple[float, float, float] = option(IMAGENET_MEAN_255, 0, 255)
    std: Tuple[float, float, float] = option(IMAGENET_STD_255, 0, 255, low_open=True)
    # evaluation
    test_size: Optional[Tuple[int, int]] = option((2048, 512), 1, MAX_IMAGE_SIZE)
    eval_mode: str = option("whole", choices=("whole", "slide"))
    eval_crop_size: Optional[Tuple[int, int]] = option(None, 1, MAX_IMAGE_SIZE)
    eval_stride: Optional[Tuple[int, int]] = option(None, 1, MAX_IMAGE_SIZE)
    # optimisation
    batch_size: int = option(16, 1, 65536)
    accum_steps: int = option(1, 1, 65536)
    lr: float = option(6e-5, 0, 10, low_open=True)
    betas: Tuple[float, float] = option((0.9, 0.999), 0, 1)
    weight_decay: float = option(0.01, 0, 10)
    head_lr_mult: float = option(10.0, 0, 1e4, low_open=True)
    param_rules: Union[str, List[Dict[str, Any]]] = "mmseg"
    warmup_iters: int = option(1500, 0, MAX_ITERS)
    warmup_ratio: float = option(1e-6, 0, 1)
    poly_power: float = option(1.0, 0, 100)
    min_lr: float = option(0.0, 0, 10)
    amp: str = option("auto", choices=("auto", "bf16", "fp16", "none"))
    clip_grad: Optional[float] = option(None, 0, 1e6, low_open=True)
    # run
    max_iters: int = option(160_000, 1, MAX_ITERS)
    eval_interval: int = option(16_000, 0, MAX_ITERS)
    checkpoint_interval: int = option(16_000, 0, MAX_ITERS)
    log_interval: int = option(50, 0, MAX_ITERS)
    keep_checkpoints: int = option(1, 1, 10_000)
    out_dir: str = "runs/train"
    seed: int = option(0, 0, 2 ** 32 - 1)
    resume: Optional[str] = None
    device: str = option("auto", max_chars=32)
    num_workers: int = option(4, 0, 1024)
    pin_memory: Optional[bool] = None
    sync_bn: bool = False
    progress: bool = True
    tensorboard: bool = True
    export: bool = True

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and name in _SQUARE_FIELDS:
                setattr(self, name, (value, value))
        self.check()

    def check(self) -> None:
        """Raise ConfigError (a ValueError) for a setting of the wrong type, out of bounds, or inconsistent with
        another."""
        check_dataclass(self, numeric_strings=True)
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"{self.accum_steps} does not divide batch_size {self.batch_size} (batch_size must be "
                              f"divisible by accum_steps)", field="accum_steps")
        if self.dataset not in DATASETS:  # pragma: no cover - the field's choices say so first
            raise ConfigError(f"must be one of {DATASETS}, got {self.dataset!r}", field="dataset")
        if self.dataset == "hf" and not self.data_root:
            raise ConfigError("must name the Hugging Face dataset for dataset hf: a Hub dataset id, a save_to_disk "
                              "folder or a folder of parquet files", field="data_root")
        if not self.ratio_range[0] <= self.ratio_range[1]:
            raise ConfigError(f"must be (low, high) with low <= high, got {self.ratio_range!r}", field="ratio_range")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}", field="device")
        try:
            arch = get_architecture(self.model)
        except ValueError as err:
            raise ConfigError(f"must name a registered architecture ({err})", field="model") from None
        self.model_kwargs = numbers_from_strings(type(arch.head), self.model_kwargs)
        try:
            apply_head_overrides(arch.head, self.model_kwargs, self.model)
        except ConfigError as err:
            raise err.located(prefix="model_kwargs") from None
        try:
            resolve_param_rules(self.param_rules, self.head_lr_mult)
        except ValueError as err:
            raise ConfigError(f"is not a parameter rule set: {err}", field="param_rules") from None
        try:
            check_backbone_args(self.backbone_args, from_file=True)
        except ConfigError as err:
            raise err.located(prefix="backbone_args") from None

    # ------------------------------------------------------------------ round trips
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: Optional[str] = None) -> "TrainConfig":
        """Build from a dict; an optional ``preset`` key starts from that preset. Unknown keys, wrong types and
        values out of bounds are ConfigErrors naming the field (and ``source``, the file it came from)."""
        try:
            values = dict(require_mapping(data))
            preset = values.pop("preset", None)
            if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
                raise ConfigError(f"unknown preset {describe(preset)}; presets: {', '.join(list_presets())}",
                                  field="preset")
            valid = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - valid)
            if unknown:
                raise ConfigError(f"is an unknown training option (all unknown: {unknown}); valid options: "
                                  f"{sorted(valid)}", field=unknown[0])
            base = get_preset(preset).to_dict() if preset else {}
            base.update(values)
            return cls(**base)
        except ConfigError as err:
            raise err.located(source) from None

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
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_config(path: PathLike) -> TrainConfig:
    """Read a YAML or JSON config file (a ``preset: NAME`` key fills in the rest from that preset)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than {MAX_CONFIG_BYTES} bytes; not a training config", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
            data = {} if data is None else data
        else:
            data = json.loads(text)
    except (Exception, RecursionError) as err:  # yaml.YAMLError, ValueError (JSON, long integers), decoding
        raise ConfigError(f"cannot parse config file {path}: {str(err)[:300] or type(err).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a mapping of option: value, got a {type(data).__name__}", source=str(path))
    return TrainConfig.from_dict(data, source=str(path))


_RECIPE = dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01, head_lr_mult=10.0, param_rules="mmseg",
               warmup_iters=1500,
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
                        head_lr_mult=1.0, param_rules="no-decay-1d", weight_decay=0.01, warmup_iters=50, warmup_ratio=1e-3, max_iters=1000,
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
