"""The distributed environment of a job that torchrun launches (training, evaluation, prediction): its process
group (NCCL on GPUs, gloo on the CPU), or one process; the split of a list of items between the processes; and
the rounds in which the processes work through their shares, so that every process learns what the others did
and a failure anywhere stops every process at once.

torchrun's ``LOCAL_RANK`` / ``WORLD_SIZE`` (and ``RANK``, ``MASTER_ADDR``, ... that ``init_process_group``
reads) are read here: they are torchrun's protocol, not switches of csap-zoo. torch is imported when a function
needs it, so the command line can read :data:`DEFAULT_COLLECTIVE_TIMEOUT_S` for its help without it.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from .errors import DistributedError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["DEFAULT_COLLECTIVE_TIMEOUT_S", "DistEnv", "all_reduce_sum", "broadcast_object", "end_distributed",
           "gather_objects", "init_distributed", "pick_device", "run_in_rounds", "shard_indices"]

DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
"""How long ``csap-zoo eval`` / ``predict`` wait in a collective for the other processes (one image's work
between two rounds), before a stopped or dead process ends the job instead of hanging it."""

T = TypeVar("T")


@dataclass
class DistEnv:
    """This process's place in the job: rank, world size, local rank, its device, whether it started the
    process group (and so must end it), and the collective timeout the group was started with (seconds)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: "torch.device" = field(default_factory=lambda: _torch().device("cpu"))
    owns_group: bool = False
    timeout_s: Optional[float] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _torch() -> Any:
    import torch

    return torch


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def pick_device(pref: str, local_rank: int) -> "torch.device":
    """The device for ``pref`` ("auto", "cpu", "cuda", "cuda:N", ...); a bare "cuda" takes this process's GPU."""
    torch = _torch()
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


def init_distributed(device_pref: str = "auto", timeout_s: Optional[float] = None) -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or an existing one; else one process.

    ``timeout_s`` bounds every collective of a group started here (None: torch's default); a process that dies
    or stops answering then ends the others with an error instead of a hang."""
    dist = _dist()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        device = pick_device(device_pref, local_rank)
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistEnv(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True, timeout_s=timeout_s)


def end_distributed(env: DistEnv) -> None:
    """End the process group if this process started it (a no-op otherwise)."""
    dist = _dist()
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    env.owns_group = False


def shard_indices(count: int, rank: int, world_size: int) -> range:
    """The items of ``range(count)`` that process ``rank`` of ``world_size`` takes: ``rank``, ``rank +
    world_size``, ... Deterministic and disjoint, together exactly ``range(count)``, and the shares differ by at
    most one item."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return range(rank, max(count, 0), world_size)


def gather_objects(env: DistEnv, obj: Any) -> List[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if not env.distributed:
        return [obj]
    out: List[Any] = [None] * env.world_size
    try:
        _dist().all_gather_object(out, obj)
    except RuntimeError as err:
        raise _lost_contact(env, err) from err
    return out


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` in every process (``obj`` itself in a single process)."""
    if not env.distributed:
        return obj
    box = [obj]
    try:
        _dist().broadcast_object_list(box, src=0)
    except RuntimeError as err:
        raise _lost_contact(env, err) from err
    return box[0]


def all_reduce_sum(env: DistEnv, array: "np.ndarray") -> "np.ndarray":
    """The element-wise sum of every process's ``array`` (an integer array stays exact: int64 throughout)."""
    if not env.distributed:
        return array
    import numpy as np

    tensor = _torch().from_numpy(np.ascontiguousarray(array)).to(env.device)
    try:
        _dist().all_reduce(tensor)
    except RuntimeError as err:
        raise _lost_contact(env, err) from err
    return tensor.cpu().numpy()


def _lost_contact(env: DistEnv, err: BaseException) -> DistributedError:
    waited = f" or did not answer within {env.timeout_s:g} s" if env.timeout_s is not None else ""
    return DistributedError(
        f"rank {env.rank} of {env.world_size}: lost contact with the other processes of the job (one of them ended"
        f"{waited}; torchrun's report names it): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def run_in_rounds(env: DistEnv, count: int, work: Callable[[int], T], *, what: str = "item",
                  describe: Optional[Callable[[int], str]] = None,
                  after_round: Optional[Callable[[Sequence[Tuple[int, T]]], None]] = None) -> None:
    """Call ``work(i)`` for this process's share of ``range(count)`` (:func:`shard_indices`), one item per round.

    After each round every process learns the results of all of them (``after_round`` gets the ``(index, result)``
    pairs of the round, in rank order, in every process): a progress bar or a summary can cover the whole job.
    An exception from ``work`` in one process stops every process at the end of that round with one
    :class:`DistributedError` naming the rank and the item (``describe(i)``, else ``what i``); in a single
    process the exception is raised unchanged. Results travel pickled, so they should be small.
    """
    rounds = -(-max(count, 0) // env.world_size)
    name = describe or (lambda i: f"{what} {i}")
    for start in range(0, rounds * env.world_size, env.world_size):
        index = start + env.rank
        outcome: Optional[Tuple[int, T]] = None
        failure: Optional[str] = None
        local_error: Optional[BaseException] = None
        if index < count:
            if not env.distributed:
                outcome = (index, work(index))
            else:
                try:
                    outcome = (index, work(index))
                except Exception as err:  # every process must hear of it, or the others would wait for this one
                    local_error = err
                    failure = f"rank {env.rank} failed on {name(index)}: {type(err).__name__}: {err}"
        gathered = gather_objects(env, (outcome, failure))
        failures = [f for _, f in gathered if f is not None]
        if failures:
            raise DistributedError("; ".join(failures) + " (the job stopped; fix or remove it and run again)",
                                   shared=True) from local_error
        if after_round is not None:
            after_round([o for o, _ in gathered if o is not None])
