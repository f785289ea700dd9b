"""All rank logic of training in one place: who am I, the process group, rank-0 side effects.

Rank, world size and local rank come from the variables ``torchrun`` sets (TorchDistributor
starts ``torchrun`` too), never from anything else; "rank zero" is the *global* rank. A
process started without them is a world of one and needs no process group.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise RuntimeError(f"environment variable {name}={raw!r} set by the launcher is not an int") from e


def pick_device(use_gpu: bool, backend: str, local_rank: int) -> tuple[torch.device, str]:
    """``(device, backend)``: cuda:<local_rank> + the configured backend when a GPU is wanted
    and present, else the CPU with gloo (nccl cannot run on CPU tensors)."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count()), backend
    if use_gpu:
        log.warning("train.use_gpu is true but no CUDA device is visible; training on the CPU with gloo")
    if backend != "gloo":
        log.info("backend %s needs CUDA tensors; using gloo on the CPU", backend)
    return torch.device("cpu"), "gloo"


def cpu_threads_per_rank(local_world_size: int) -> int:
    """Cores this process may use divided by the ranks sharing this machine (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def init(use_gpu: bool, backend: str, timeout_s: float = 1800.0) -> RankInfo:
    """Join the process group the launcher prepared (if any) and pick this rank's device.

    CPU ranks get one intra-op thread each so that N ranks share N cores instead of
    oversubscribing them (each would otherwise start one thread per core).
    """
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device, backend = pick_device(use_gpu, backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cpu_threads_per_rank(_env_int("LOCAL_WORLD_SIZE", world)))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def shutdown() -> None:
    """Leave the process group (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: RankInfo) -> None:
    if info.distributed:
        dist.barrier()


def on_rank_zero(info: RankInfo, action: Callable[[], T]) -> T | None:
    """Run a side effect (file write, log line, table row) on global rank 0 only, then wait
    at a barrier so that no rank reads what rank 0 has not finished writing."""
    result = action() if info.is_zero else None
    barrier(info)
    return result


def min_over_ranks(info: RankInfo, value: int) -> int:
    """The smallest ``value`` any rank holds (all ranks get the same answer)."""
    if not info.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def sum_over_ranks(info: RankInfo, values: list[float]) -> list[float]:
    """Element-wise sum of a short float vector over all ranks."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_from_zero(info: RankInfo, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects: decisions, small results)."""
    if not info.distributed:
        return obj
    box: list[Any] = [obj if info.is_zero else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device(info))
    return box[0]


def gather_to_zero(info: RankInfo, obj: T) -> list[T] | None:
    """Every rank's ``obj`` as a list indexed by rank on rank 0; None elsewhere."""
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_zero else None
    dist.gather_object(obj, out, dst=0)
    return out


def _collective_device(info: RankInfo) -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    return info.device if info.backend == "nccl" else torch.device("cpu")


@contextmanager
def process_group(use_gpu: bool, backend: str) -> Iterator[RankInfo]:
    """``init`` ... ``shutdown`` as a context manager."""
    info = init(use_gpu, backend)
    try:
        yield info
    finally:
        shutdown()
