"""The training loop: optimiser steps with AMP, DDP and gradient accumulation, evaluation, checkpoints and exact
resume.

``train(config)`` runs one training job; under ``torchrun --nproc_per_node=N`` it runs DDP (NCCL on GPUs, gloo on
the CPU) with each process taking its share of every global batch (see :mod:`csap_zoo.training.data`: with the same
global batch, 2 processes x 1 step and 1 process x 2 accumulation steps see the same micro-batches).

Resume reproduces the uninterrupted run: checkpoints carry model, optimiser, scheduler, grad scaler, every process's
RNG states and the iteration, and evaluation runs under a forked RNG, so it does not perturb training randomness.
Checkpoints are written atomically (temp file, fsync, rename) and hold only tensors and plain values
(``torch.load(weights_only=True)`` reads them). After a crash (even SIGKILL) ``resume="auto"`` continues from the
newest *readable* checkpoint and ends as the uninterrupted run would (same weights, final/ and best/ with the same
metrics); :mod:`csap_zoo.training.checkpoint` says how checkpoints are kept and set aside,
:mod:`csap_zoo.training.history` how ``log.jsonl`` stays one history.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import end_distributed, gather_objects, init_distributed
from ..evaluation import evaluate, percent_metrics, to_percent
from ..models.segmentor import Segmentor
from .checkpoint import (
    CHECKPOINT_FORMAT, CheckpointFolder, check_optimizer_fits, iteration_in_name, load_training_checkpoint, rng_state,
    set_rng_state,
)
from .config import TrainConfig, get_preset, load_config
from .data import build_datasets, train_loader, validate_datasets
from .history import RunLog
from .model import build_model
from .optim import amp_dtype, autocast, build_optimizer, describe_param_groups, param_groups

__all__ = ["TrainResult", "Trainer", "train"]


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
        self.checkpoints = CheckpointFolder(self.out_dir, config.keep_checkpoints, self.env.is_main, self._log)
        self.run_log = RunLog()
        self.history: List[Dict[str, float]] = []
        self.evaluations: List[Dict[str, Any]] = []
        self.iteration = 0
        self.best_metric: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.last_metrics: Dict[str, Any] = {}  # the latest evaluation's, with its iteration in "_iter"
        self._resumed_from: Optional[Path] = None
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
        validate_datasets(cfg, env, self.train_set, self.val_set)
        self.model = build_model(cfg, self.info)
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
        self.optimizer, self.schedule, self.scheduler = build_optimizer(groups, cfg)
        self.amp_dtype = amp_dtype(cfg.amp, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        # training randomness (dropout, drop path) differs per process, like independent GPUs
        torch.manual_seed(cfg.seed + 7919 * env.rank)
        if env.is_main:
            self.checkpoints.clean_leftovers()
        resume = self.checkpoints.find_resume(cfg.resume)
        if resume is not None:
            self._load(*resume)
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")

    def _load(self, path: Path, state: Optional[Dict[str, Any]] = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its contents, when already read)."""
        state = state if state is not None else load_training_checkpoint(path)
        self.module.load_state_dict(state["model"])
        check_optimizer_fits(state, path, self.config.param_rules, len(self.optimizer.param_groups))
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
        self.checkpoints.mark_good(path)
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
        return self.checkpoints.write(state, self.iteration)

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
        devices = [env.device] if env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            # the module being trained, as it is (torch, no fused copy); bf16 autocast on GPUs trained in bf16
            bf16 = self.amp_dtype == torch.bfloat16 and env.device.type == "cuda"
            segmenter = Segmenter(module, InferenceConfig(**overrides), device=env.device, backend="torch",
                                  precision="bf16" if bf16 else "fp32", optimize=False)
            result = evaluate(segmenter, self.val_set, progress=False, env=env)
        module.train(was_training)
        metrics = {k: v for k, v in result.to_dict().items() if k != "per_class"}
        metrics["IoU"] = {name: v["IoU"] for name, v in result.to_dict()["per_class"].items()}
        return metrics

    def close(self) -> None:
        self.run_log.close()
        end_distributed(self.env)

    # ------------------------------------------------------------------ the loop
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
                with autocast(self.amp_dtype, env.device):
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
        self.run_log.write(record)
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
        dropped = 0
        if env.is_main:
            dropped = self.run_log.open(self.out_dir / "log.jsonl", self.iteration,
                                        self.out_dir / "tensorboard" if cfg.tensorboard else None)
        if self.iteration:
            self.run_log.write({"event": "resume", "iter": self.iteration,
                                "checkpoint": self._resumed_from.name if self._resumed_from else None,
                                "dropped": dropped})
        else:
            self.run_log.write({"event": "start", "iter": 0, "world_size": env.world_size,
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
            batches = iter(train_loader(cfg, env, self.train_set, self.iteration))
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
                    self.run_log.write({"event": "train", "iter": self.iteration, "loss": loss, "lr": lr,
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
                self.run_log.write({"event": "end", "iter": self.iteration, "mIoU": metrics.get("mIoU"),
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
