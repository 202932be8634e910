"""The training loop: data, optimiser and schedule, AMP, DDP, checkpoints and exact resume.

``train(config)`` runs one training job; under ``torchrun --nproc_per_node=N`` it runs DDP (NCCL on GPUs, gloo on
the CPU) with each process taking its share of every global batch.

Determinism, which makes resume and multi-process runs reproduce single-process ones:
- the order of samples is a permutation drawn from ``(seed, epoch)``, and global batch ``i`` is always the same
  images, split into ``world_size * accum_steps`` micro-batches in a fixed order (process ``r`` at accumulation
  step ``a`` takes chunk ``a * world_size + r``); with the same global batch, 2 processes x 1 step and
  1 process x 2 accumulation steps see the same micro-batches;
- each sample's augmentation draws from its own generator seeded by ``(seed, iteration, slot)``, so it does not
  depend on data workers, processes or restarts;
- checkpoints carry model, optimiser, scheduler, grad scaler, every process's RNG states and the iteration;
  evaluation runs under a forked RNG, so it does not perturb training randomness.
Checkpoints are written atomically (temp file, fsync, rename) and hold only tensors and plain values
(``torch.load(weights_only=True)`` reads them).

After a crash (even SIGKILL) ``resume="auto"`` continues from the newest *readable* checkpoint and ends as the
uninterrupted run would (same weights, final/ and best/ with the same metrics):
- retention (``keep_checkpoints``) never removes the checkpoint just written and counts only readable ones; a
  file that cannot be read is renamed ``iter_<N>.pt.unreadable`` and one with a later iteration than the run
  that just wrote a checkpoint (a different run's) ``iter_<N>.pt.superseded``, each with a warning;
- the temporaries a killed process leaves (``checkpoints/.iter_*.tmp``, staging folders ``.best.*.tmp`` and
  ``.final.*.tmp``, only csap-zoo's own names and marked folders) are removed at the next start when their writer
  is provably gone, or, from another host or PID namespace, untouched for an hour (see ``csap_zoo.fileio``);
- ``log.jsonl`` is one history: a resume keeps the records up to the checkpoint's iteration, drops those of the
  lost work (and any line cut short), and adds a ``resume`` event; a run that starts at iteration 0 starts a
  new log.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.datasets import DatasetError, SegmentationDataset, check_dataset, open_train_val
from ..data.transforms import TrainTransform
from ..evaluation import Evaluator, percent_metrics, to_percent
from ..fileio import atomic_write, clean_stale_temp
from ..models.segmentor import DataConfig, Segmentor
from .checkpoint import (
    CHECKPOINT_FORMAT, checkpoints_in, is_readable_checkpoint, iteration_in_name, load_training_checkpoint, rng_state, save_checkpoint_file,
    set_aside, set_rng_state,
)
from .config import TrainConfig, get_preset, load_config
from .distributed import gather_objects, init_distributed
from .optim import describe_param_groups, param_groups

__all__ = ["CHECKPOINT_FORMAT", "TrainResult", "Trainer", "build_datasets", "load_training_checkpoint", "train"]



# ---------------------------------------------------------------------- data
def build_datasets(config: TrainConfig) -> Tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """Train and validation readers for a config (pairing checked; contents are checked by the trainer); the
    layouts and their default splits are csap_zoo.data.open_train_val's."""
    return open_train_val(
        config.dataset, config.data_root or None, config.train_split or None, config.val_split or None,
        train_images=config.train_images or None, train_masks=config.train_masks or None,
        val_images=config.val_images or None, val_masks=config.val_masks or None,
        classes_file=config.classes_file or None, dataset_name=config.dataset_name,
        ignore_index=config.ignore_index, reduce_zero_label=config.reduce_zero_label)


class _AugmentedDataset(Dataset):
    """Items are ``(index, seed)`` keys: the sample at ``index`` augmented with a generator seeded by ``seed``."""

    def __init__(self, base: SegmentationDataset, transform: TrainTransform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image, mask = self.base[index]
        return self.transform(image, mask, torch.Generator().manual_seed(seed))


class GlobalBatchSampler(Sampler):
    """Yields this process's micro-batches of ``(index, seed)`` keys for iterations ``start..max_iters-1``.

    Global batch ``it`` (``batch_size`` samples) is a slice of the permutation of epoch ``it // batches_per_epoch``;
    it is cut into ``world * accum`` chunks; process ``rank`` takes chunk ``a * world + rank`` at step ``a``.
    """

    def __init__(self, num_samples: int, batch_size: int, accum_steps: int, world_size: int, rank: int, seed: int,
                 start_iter: int, max_iters: int) -> None:
        if num_samples < batch_size:
            raise ValueError(f"the training set has {num_samples} images, fewer than the global batch size "
                             f"{batch_size}")
        chunks = world_size * accum_steps
        if batch_size % chunks:
            raise ValueError(f"batch_size {batch_size} must be divisible by world_size x accum_steps = {chunks}")
        self.n, self.batch, self.accum, self.world, self.rank = num_samples, batch_size, accum_steps, world_size, rank
        self.micro = batch_size // chunks
        self.seed, self.start, self.stop = seed, start_iter, max_iters
        self.per_epoch = num_samples // batch_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accum

    def global_batch(self, iteration: int) -> List[int]:
        epoch, k = divmod(iteration, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return perm[k * self.batch:(k + 1) * self.batch].tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for it in range(self.start, self.stop):
            batch = self.global_batch(it)
            for a in range(self.accum):
                chunk = a * self.world + self.rank
                slots = range(chunk * self.micro, (chunk + 1) * self.micro)
                yield [(batch[s], (self.seed * 1_000_003 + it) * 4099 + s) for s in slots]


# ---------------------------------------------------------------------- optimisation
class WarmupPoly:
    """LR factor: linear warmup from ``warmup_ratio`` over ``warmup_iters``, then poly decay to ``min_ratio``."""

    def __init__(self, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float, min_ratio: float):
        self.max_iters, self.warmup_iters, self.warmup_ratio = max_iters, warmup_iters, warmup_ratio
        self.power, self.min_ratio = power, min_ratio

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * it / self.warmup_iters
        span = max(self.max_iters - self.warmup_iters, 1)
        progress = min(max(it - self.warmup_iters, 0) / span, 1.0)
        return (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio


def _amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    if setting == "none":
        return None
    if device.type != "cuda":
        if setting == "fp16":
            raise ValueError("amp='fp16' needs CUDA; on the CPU use amp='bf16' or 'none'")
        return torch.bfloat16 if setting == "bf16" else None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _labelled(mask: np.ndarray, ignore_index: int) -> bool:
    return bool((mask != ignore_index).any())


class _LabelTally:
    """Passes ``check_dataset``'s reads through to a dataset and counts the masks with a labelled pixel."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        import threading

        self.dataset, self.samples = dataset, dataset.samples
        self.labelled = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.dataset)

    def load_image(self, index: int) -> np.ndarray:
        return self.dataset.load_image(index)

    def load_mask(self, index: int) -> np.ndarray:
        mask = self.dataset.load_mask(index)
        labelled = _labelled(mask, self.dataset.info.ignore_index)
        with self._lock:
            self.labelled += labelled
        return mask


def _first_labelled_mask(dataset: SegmentationDataset) -> Tuple[Optional[int], int]:
    """Index of the first mask with a labelled pixel (reading no further), and how many masks could not be read."""
    unreadable = 0
    for i in range(len(dataset)):
        try:
            if _labelled(dataset.load_mask(i), dataset.info.ignore_index):
                return i, unreadable
        except (FileNotFoundError, ValueError, OSError):
            unreadable += 1
    return None, unreadable


# ---------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    """What a run produced; ``history`` has one entry per optimiser step.

    ``metrics`` (like ``evaluations`` and log.jsonl's eval records) holds fractions in [0, 1], as
    ``EvalResult.to_dict()`` does; ``metrics_percent`` is the same in percent, the unit the run's printed lines,
    ``model.metrics`` and the model cards of final/ and best/ use (those round it to 2 decimals).
    """

    out_dir: Path
    final_dir: Optional[Path]
    best_dir: Optional[Path]
    metrics: Dict[str, Any]
    best_metric: Optional[float]
    history: List[Dict[str, float]]
    evaluations: List[Dict[str, Any]]
    iterations: int
    wall_time: float

    @property
    def metrics_percent(self) -> Dict[str, Any]:
        """``metrics`` with aAcc / mIoU / mAcc and the per-class IoU in percent."""
        return percent_metrics(self.metrics)


Hook = Callable[["Trainer", int, float], None]


class Trainer:
    """One training run. ``Trainer(config).run()``; ``hooks`` are called as ``hook(trainer, iteration, loss)``
    after every optimiser step (before evaluation and checkpointing of that iteration)."""

    def __init__(self, config: TrainConfig, hooks: Sequence[Hook] = ()) -> None:
        self.config = config
        self.hooks = list(hooks)
        self.env = init_distributed(config.device)
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.history: List[Dict[str, float]] = []
        self.evaluations: List[Dict[str, Any]] = []
        self.iteration = 0
        self.best_metric: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.last_metrics: Dict[str, Any] = {}  # the latest evaluation's, with its iteration in "_iter"
        self._resumed_from: Optional[Path] = None
        self._resume_state: Optional[Dict[str, Any]] = None
        self._good_checkpoints: set = set()  # checkpoints this run wrote, loaded or found readable
        self._resume_record: Optional[Dict[str, Any]] = None
        self._log_handle = None
        self._tb = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _log(self, message: str) -> None:
        if self.env.is_main:
            print(message, file=sys.stderr, flush=True)

    def _setup(self) -> None:
        cfg, env = self.config, self.env
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.train_set, self.val_set = build_datasets(cfg)
        self.info = self.train_set.info
        self._validate_data()
        self.model = self._build_model()
        if cfg.sync_bn and env.distributed:
            if env.device.type != "cuda":
                raise ValueError("sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); set sync_bn=False")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(env.device)
        self.module: Segmentor = self.model
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        groups = param_groups(self.module, cfg.lr, cfg.weight_decay, cfg.param_rules, cfg.head_lr_mult)
        self._log(f"parameter groups (param_rules={cfg.param_rules!r}):\n{describe_param_groups(groups)}")
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.schedule = WarmupPoly(cfg.max_iters, cfg.warmup_iters, cfg.warmup_ratio, cfg.poly_power,
                                   cfg.min_lr / cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.amp_dtype = _amp_dtype(cfg.amp, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        # training randomness (dropout, drop path) differs per process, like independent GPUs
        torch.manual_seed(cfg.seed + 7919 * env.rank)
        if env.is_main:
            self._clean_leftovers()
        resume = self._resume_path()
        if resume is not None:
            self._load(resume)
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")

    def _validate_data(self) -> None:
        """Every process checks its share of every sample; all report the same full list before step 1."""
        cfg, env = self.config, self.env
        problems: List[str] = []
        labelled: Dict[str, int] = {}  # masks with a labelled pixel per set, when the full check counted them
        sets = [("training set", self.train_set), ("validation set", self.val_set)]
        if cfg.validate == "full":
            for what, ds in sets:
                if ds is None:
                    continue
                tally = _LabelTally(ds)
                mine = check_dataset(tally, range(env.rank, len(ds), env.world_size),  # type: ignore[arg-type]
                                     workers=max(cfg.num_workers, 1))
                parts = gather_objects(env, (mine, tally.labelled))
                problems += [f"{what}: {p}" for part, _ in parts for p in part]
                labelled[what] = sum(count for _, count in parts)
        for what, ds in sets:
            if ds is None or labelled.get(what):
                continue
            # not counted (validate="pairs"), or none seen: look until the first labelled mask
            first, unreadable = _first_labelled_mask(ds)
            if first is None:
                ignore = self.info.ignore_index
                how = (f" (with reduce_zero_label, stored 0 and {ignore} are ignored)"
                       if getattr(ds, "reduce_zero_label", False) else "")
                consequence = ("so there is nothing to learn" if ds is self.train_set
                               else "so every metric would be undefined")
                problems.append(f"{what}: no labelled pixel in any of its {len(ds)} masks: every "
                                f"pixel{' of the readable ones' if unreadable else ''} is the ignore index "
                                f"{ignore}{how}, {consequence}; check the masks folder, "
                                f"ignore_index and reduce_zero_label")
        if self.val_set is not None and self.val_set.num_classes != self.train_set.num_classes:
            problems.append("training and validation sets have different class counts")
        if problems:
            raise DatasetError(problems, "the data")
        if len(self.train_set) < cfg.batch_size:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than batch_size "
                             f"{cfg.batch_size}")

    def _build_model(self) -> Segmentor:
        from ..hub import create_model

        cfg = self.config
        num_classes = self.info.num_classes
        kwargs: Dict[str, Any] = dict(cfg.model_kwargs)
        if cfg.backbone_args:
            kwargs["backbone_args"] = dict(cfg.backbone_args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*classifier is re-initialised.*")
            if cfg.init == "scratch":
                model = create_model(cfg.model, num_classes=num_classes, **kwargs)
            elif cfg.init == "imagenet":
                model = create_model(cfg.model, pretrained=True, num_classes=num_classes, **kwargs)
            elif Path(cfg.init).exists():
                model = create_model(cfg.model, pretrained=cfg.init, num_classes=num_classes, **kwargs)
            else:
                arch = cfg.init.split(".", 1)[0]
                if arch != cfg.model:
                    raise ValueError(f"init={cfg.init!r} is a {arch} checkpoint but model={cfg.model!r}; set model "
                                     f"to {arch!r} or choose another checkpoint")
                model = create_model(cfg.init, pretrained=True, num_classes=num_classes, **kwargs)
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.data_config = DataConfig(
            mean=tuple(cfg.mean), std=tuple(cfg.std), train_crop=tuple(cfg.crop_size),
            test_size=tuple(cfg.test_size) if cfg.test_size else None, dataset=self.info.name,
            class_names=list(self.info.class_names), palette=[tuple(c) for c in self.info.palette],
        )
        if model.config is not None:
            model.config.dataset = None
        return model

    def _clean_leftovers(self) -> None:
        """Remove the temporaries of a killed run whose writer is gone (never a live writer's)."""
        removed = (clean_stale_temp(self.ckpt_dir, r"iter_\d+\.pt")
                   + clean_stale_temp(self.out_dir, r"best|final|log\.jsonl"))
        for path in removed:
            self._log(f"removed {path}, left behind by a run that was killed")

    def _newest_readable(self, folder: Path, own_folder: bool) -> Optional[Path]:
        """The newest checkpoint in ``folder`` that loads (kept in ``_resume_state``). Unreadable ones above it are
        reported and, in ``own_folder`` (this run's own folder, rank 0), renamed out of the way."""
        for _, path in reversed(checkpoints_in(folder)):
            try:
                self._resume_state = load_training_checkpoint(path)
                return path
            except ValueError as err:  # a damaged file (it never should be: writes are atomic)
                note = ""
                if own_folder and self.env.is_main:
                    with contextlib.suppress(OSError):
                        note = f"; renamed it {set_aside(path, 'unreadable').name}"
                self._log(f"warning: skipping unreadable checkpoint {path}{note}: {err}")
        return None

    def _resume_path(self) -> Optional[Path]:
        resume = self.config.resume
        if resume is None:
            return None
        if resume == "auto":
            return self._newest_readable(self.ckpt_dir, own_folder=True)
        path = Path(resume)
        if path.is_dir():  # an output folder or a checkpoints folder
            inner = path / "checkpoints"
            found = self._newest_readable(inner, own_folder=False) if inner.is_dir() else None
            found = found or self._newest_readable(path, own_folder=False)
            if found is None:
                raise ValueError(f"resume={resume!r} is a folder without a readable training checkpoint (looked "
                                 f"for iter_<N>.pt in it and in its checkpoints/ folder); pass a checkpoint file, "
                                 f"or 'auto' to continue the run in out_dir ({self.out_dir}) if it has one")
            return found
        return path

    def _load(self, path: Path) -> None:
        state = self._resume_state if self._resume_state is not None else load_training_checkpoint(path)
        self._resume_state = None
        self.module.load_state_dict(state["model"])
        saved_rules = state.get("config", {}).get("param_rules", "no-decay-1d")  # older versions had only that rule
        saved_groups = len(state["optimizer"].get("param_groups", []))
        if saved_rules != self.config.param_rules or saved_groups != len(self.optimizer.param_groups):
            raise ValueError(
                f"{path} was trained with param_rules={saved_rules!r} ({saved_groups} parameter groups); this "
                f"config has param_rules={self.config.param_rules!r} ({len(self.optimizer.param_groups)} groups), "
                f"so its optimiser state does not fit. Resume with param_rules={saved_rules!r}, or start a new run.")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) != self.env.world_size:
            self._log(f"warning: {path} was written by {len(rng)} process(es), this run has "
                      f"{self.env.world_size}; random streams will differ from an uninterrupted run")
        set_rng_state(rng[min(self.env.rank, len(rng) - 1)])
        self.iteration = int(state["iteration"])
        best = state.get("best", {})
        self.best_metric = best.get("metric")
        self.best_iteration = best.get("iteration")
        self.evaluations = list(state.get("evaluations", []))
        self.last_metrics = dict(state.get("last_metrics") or {})
        named = iteration_in_name(path)
        if named is not None and named != self.iteration:
            self._log(f"warning: {path} holds iteration {self.iteration}, not the one its name says")
        self._resumed_from = path
        self._good_checkpoints.add(path.resolve())
        self._log(f"resumed from {path} at iteration {self.iteration}")

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``checkpoints/iter_<N>.pt`` (rank 0; every process contributes its RNG state)."""
        rng = gather_objects(self.env, rng_state())
        if not self.env.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT, "version": 1, "iteration": self.iteration,
            "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng,
            "best": {"metric": self.best_metric, "iteration": self.best_iteration},
            "evaluations": self.evaluations, "last_metrics": self.last_metrics, "world_size": self.env.world_size,
            "config": self.config.to_dict(),
        }
        path = self.ckpt_dir / f"iter_{self.iteration:08d}.pt"
        save_checkpoint_file(state, path)
        self._good_checkpoints.add(path.resolve())
        self._retain(path)
        return path

    def _retain(self, written: Path) -> None:
        """Keep ``written`` and the newest ``keep_checkpoints - 1`` readable checkpoints before it; delete older
        ones; set aside unreadable ones and those with a later iteration (another run's: resume must not pick
        them over this run's)."""
        kept = 1
        for iteration, path in reversed(checkpoints_in(self.ckpt_dir)):
            if path == written:
                continue
            try:
                if iteration > self.iteration:
                    moved = set_aside(path, "superseded")
                    self._log(f"warning: {path.name} is from another run (iteration {iteration}, this run wrote "
                              f"{written.name}); renamed it {moved.name} so that resume follows this run")
                elif kept >= self.config.keep_checkpoints:
                    path.unlink(missing_ok=True)
                elif path.resolve() in self._good_checkpoints or is_readable_checkpoint(path):
                    self._good_checkpoints.add(path.resolve())
                    kept += 1
                else:
                    moved = set_aside(path, "unreadable")
                    self._log(f"warning: checkpoint {path.name} cannot be read; renamed it {moved.name} (not "
                              f"counted in keep_checkpoints)")
            except OSError as err:
                self._log(f"warning: could not tidy {path}: {err}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> Dict[str, Any]:
        """Distributed evaluation on the validation set: each process predicts its share, confusion matrices are
        summed. Returns fractions (aAcc, mIoU, mAcc) and per-class IoU."""
        from ..inference import InferenceConfig, Segmenter

        cfg, env = self.config, self.env
        if self.val_set is None:
            return {}
        module = self.module
        was_training = module.training
        if env.distributed:  # BN running statistics drift apart per process; evaluate rank 0's (the saved ones)
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)
        overrides: Dict[str, Any] = dict(mode=cfg.eval_mode, resize=tuple(cfg.test_size) if cfg.test_size else None)
        if cfg.eval_crop_size:
            overrides["crop_size"] = tuple(cfg.eval_crop_size)
        if cfg.eval_stride:
            overrides["stride"] = tuple(cfg.eval_stride)
        evaluator = Evaluator(self.info.num_classes, self.info.ignore_index, list(self.info.class_names))
        devices = [env.device] if env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            segmenter = Segmenter(module, InferenceConfig(**overrides), device=env.device,
                                  amp="bf16" if self.amp_dtype == torch.bfloat16 else None, optimize=False)
            for i in range(env.rank, len(self.val_set), env.world_size):
                image, mask = self.val_set[i]
                evaluator.update(segmenter.predict(image), mask, name=str(self.val_set.mask_path(i)))
        matrix = torch.from_numpy(evaluator.confusion_matrix)
        if env.distributed:
            matrix = matrix.to(env.device)
            dist.all_reduce(matrix)
        evaluator.confusion_matrix = matrix.cpu().numpy()
        result = evaluator.compute()
        module.train(was_training)
        metrics = {k: v for k, v in result.to_dict().items() if k != "per_class"}
        metrics["IoU"] = {name: v["IoU"] for name, v in result.to_dict()["per_class"].items()}
        return metrics

    # ------------------------------------------------------------------ logging
    def _open_logs(self) -> None:
        """Open ``log.jsonl``: a new one at iteration 0; on a resume, the records up to the checkpoint's iteration
        (rewritten atomically), then a ``resume`` event."""
        if not self.env.is_main:
            return
        path = self.out_dir / "log.jsonl"
        if self.iteration == 0:
            self._log_handle = open(path, "w", encoding="utf-8")
        else:
            kept, dropped = _log_up_to(path, self.iteration)
            atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"), fsync=True)
            self._log_handle = open(path, "a", encoding="utf-8")
            self._resume_record = {"event": "resume", "iter": self.iteration,
                                   "checkpoint": self._resumed_from.name if self._resumed_from else None,
                                   "dropped": dropped}
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self._tb = None

    def _write_log(self, record: Dict[str, Any]) -> None:
        if self._log_handle is not None:
            self._log_handle.write(json.dumps(record) + "\n")
            self._log_handle.flush()
        if self._tb is not None:
            step = record.get("iter", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iter", "time"):
                    self._tb.add_scalar(f"{record.get('event', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.env.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.env.owns_group = False

    # ------------------------------------------------------------------ the loop
    def _loader(self) -> DataLoader:
        cfg, env = self.config, self.env
        transform = TrainTransform(crop_size=tuple(cfg.crop_size), scale=tuple(cfg.scale) if cfg.scale else None,
                                   ratio_range=tuple(cfg.ratio_range), cat_max_ratio=cfg.cat_max_ratio,
                                   flip_prob=cfg.flip_prob, photometric=cfg.photometric, mean=cfg.mean,
                                   std=cfg.std, ignore_index=self.info.ignore_index)
        sampler = GlobalBatchSampler(len(self.train_set), cfg.batch_size, cfg.accum_steps, env.world_size,
                                     env.rank, cfg.seed, self.iteration, cfg.max_iters)
        pin = env.device.type == "cuda" if cfg.pin_memory is None else cfg.pin_memory
        return DataLoader(_AugmentedDataset(self.train_set, transform), batch_sampler=sampler,
                          num_workers=cfg.num_workers, pin_memory=pin,
                          persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed),
                          prefetch_factor=4 if cfg.num_workers else None)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != self.info.ignore_index).any()):
            return logits.sum() * 0.0  # an all-ignore crop: no signal, but every process must still backprop
        return F.cross_entropy(logits.float(), target, ignore_index=self.info.ignore_index)

    def _step(self, batches: Iterator) -> float:
        cfg, env = self.config, self.env
        self.model.train()
        total = torch.zeros((), device=env.device)
        for a in range(cfg.accum_steps):
            images, targets = next(batches)
            images = images.to(env.device, non_blocking=True)
            targets = targets.to(env.device, non_blocking=True)
            sync = contextlib.nullcontext()
            if env.distributed and a < cfg.accum_steps - 1:
                sync = self.model.no_sync()
            with sync:
                with self._autocast():
                    logits = self.model(images)
                loss = self._loss(logits, targets) / cfg.accum_steps
                self.scaler.scale(loss).backward()
            total += loss.detach()
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if env.distributed:
            dist.all_reduce(total)
            total /= env.world_size
        return float(total)

    def _evaluate_and_track(self) -> Dict[str, Any]:
        metrics = self.evaluate()
        if not metrics:
            return metrics
        self.last_metrics = {**metrics, "_iter": self.iteration}
        record = {"event": "eval", "iter": self.iteration, "aAcc": metrics["aAcc"], "mIoU": metrics["mIoU"],
                  "mAcc": metrics["mAcc"]}
        self.evaluations.append(record)
        self._write_log(record)
        self._log(f"iter {self.iteration}: mIoU {_pct(metrics['mIoU'])}  aAcc {_pct(metrics['aAcc'])}  "
                  f"mAcc {_pct(metrics['mAcc'])}")
        miou = metrics["mIoU"]
        if miou is not None and (self.best_metric is None or miou > self.best_metric):
            self.best_metric, self.best_iteration = miou, self.iteration
            if self.env.is_main and self.config.export:
                self.module.save_pretrained(str(self.out_dir / "best"), metrics=_card_metrics(metrics, self))
        return metrics

    def run(self) -> TrainResult:
        cfg, env = self.config, self.env
        start_time = time.time()
        self._open_logs()
        if self.iteration:
            self._write_log(self._resume_record or {"event": "resume", "iter": self.iteration})
        else:
            self._write_log({"event": "start", "iter": 0, "world_size": env.world_size,
                             "train_images": len(self.train_set),
                             "val_images": len(self.val_set) if self.val_set is not None else 0})
        self._log(f"training {cfg.model} on {self.train_set!r} for {cfg.max_iters} iterations "
                  f"(global batch {cfg.batch_size}, {env.world_size} process(es), {env.device})")
        bar = None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.max_iters, initial=self.iteration, unit="it", desc="train", dynamic_ncols=True)
        metrics: Dict[str, Any] = {}
        if self.last_metrics.get("_iter") == self.iteration:  # resumed where the last evaluation was made
            metrics = {k: v for k, v in self.last_metrics.items() if k != "_iter"}
        try:
            batches = iter(self._loader())
            while self.iteration < cfg.max_iters:
                lr = self.optimizer.param_groups[0]["lr"]
                loss = self._step(batches)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at iteration {self.iteration + 1}; lower the lr or "
                                             f"enable clip_grad")
                self.iteration += 1
                self.history.append({"iter": self.iteration, "loss": loss, "lr": lr})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if cfg.log_interval and self.iteration % cfg.log_interval == 0:
                    self._write_log({"event": "train", "iter": self.iteration, "loss": loss, "lr": lr,
                                     "time": round(time.time() - start_time, 3)})
                for hook in self.hooks:
                    hook(self, self.iteration, loss)
                last = self.iteration == cfg.max_iters
                if (cfg.eval_interval and self.iteration % cfg.eval_interval == 0) or last:
                    metrics = self._evaluate_and_track()
                if (cfg.checkpoint_interval and self.iteration % cfg.checkpoint_interval == 0) or last:
                    self.save_checkpoint()
            if not metrics and self.val_set is not None:
                if any(e["iter"] == self.iteration for e in self.evaluations):
                    metrics = self.evaluate()  # a checkpoint without its metrics: the same evaluation again
                else:
                    metrics = self._evaluate_and_track()
            final_dir = None
            if env.is_main and cfg.export:
                final_dir = self.module.save_pretrained(str(self.out_dir / "final"),
                                                        metrics=_card_metrics(metrics, self) if metrics else {})
                final_dir = Path(final_dir)
            if env.is_main and (self.out_dir / "log.jsonl").exists():
                self._write_log({"event": "end", "iter": self.iteration, "mIoU": metrics.get("mIoU"),
                                 "time": round(time.time() - start_time, 3)})
        finally:
            if bar is not None:
                bar.close()
        best_dir = self.out_dir / "best"
        return TrainResult(
            out_dir=self.out_dir, final_dir=final_dir, best_dir=best_dir if best_dir.is_dir() else None,
            metrics=metrics, best_metric=self.best_metric, history=list(self.history),
            evaluations=list(self.evaluations), iterations=self.iteration, wall_time=time.time() - start_time,
        )


def _log_up_to(path: Path, iteration: int) -> Tuple[List[str], int]:
    """The lines of a log that describe iterations up to ``iteration`` (no ``end`` event, no line that does not
    parse), and how many were dropped."""
    if not path.is_file():
        return [], 0
    kept: List[str] = []
    dropped = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                keep = (isinstance(record, dict) and record.get("event") != "end" and line.endswith("\n")
                        and int(record.get("iter", 0)) <= iteration)
            except (ValueError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    return kept, dropped


def _pct(value: Optional[float]) -> str:
    pct = to_percent(value)
    return "nan" if pct is None or math.isnan(pct) else f"{pct:.2f}"


def _card_metrics(metrics: Dict[str, Any], trainer: Trainer) -> Dict[str, Any]:
    """Metrics for the model card / config.json: percentages (2 decimals) plus what they were measured on."""
    out: Dict[str, Any] = {k: to_percent(metrics[k], 2) for k in ("mIoU", "aAcc", "mAcc")
                           if metrics.get(k) is not None}
    out["dataset"] = trainer.info.name
    out["val_images"] = len(trainer.val_set) if trainer.val_set is not None else 0
    out["iterations"] = trainer.iteration
    return out


def _as_config(config: Union[TrainConfig, Dict[str, Any], str, os.PathLike], overrides: Dict[str, Any]
               ) -> TrainConfig:
    if isinstance(config, TrainConfig):
        base = config
    elif isinstance(config, dict):
        base = TrainConfig.from_dict(config)
    elif isinstance(config, (str, os.PathLike)) and Path(config).suffix.lower() in (".yaml", ".yml", ".json"):
        base = load_config(config)
    elif isinstance(config, str):
        base = get_preset(config)
    else:
        raise ValueError(f"config must be a TrainConfig, a dict, a YAML/JSON file or a preset name, got {config!r}")
    return base.replace(**overrides) if overrides else base


def train(config: Union[TrainConfig, Dict[str, Any], str, os.PathLike] = "shapes-demo",
          hooks: Sequence[Hook] = (), **overrides: Any) -> TrainResult:
    """Train a model: ``config`` is a ``TrainConfig``, a dict, a YAML/JSON file or a preset name; keyword
    arguments override its fields. Under torchrun every process calls this; rank 0 logs, checkpoints and exports.
    """
    trainer = Trainer(_as_config(config, overrides), hooks=hooks)
    try:
        return trainer.run()
    finally:
        trainer.close()
