"""The distributed environment of a training job: torchrun's process group (NCCL on GPUs, gloo on the CPU), or
one process."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "gather_objects", "init_distributed", "pick_device"]


@dataclass
class DistEnv:
    """This process's place in the job: rank, world size, local rank, its device, and whether it started the
    process group (and so must end it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int) -> torch.device:
    """The device for ``pref`` ("auto", "cpu", "cuda", "cuda:N", ...); a bare "cuda" takes this process's GPU."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use device='cpu'")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or an existing one; else one process."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        device = pick_device(device_pref, local_rank)
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistEnv(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)


def gather_objects(env: DistEnv, obj: Any) -> List[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if not env.distributed:
        return [obj]
    out: List[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
