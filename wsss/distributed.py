"""torchrun support: process group set-up, rank helpers and sharding of per-image work.

Under ``torchrun --nproc_per_node N`` training uses DistributedDataParallel (gloo on CPU, nccl
on CUDA); per-image stages split the images across ranks; rank 0 writes run-level files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> None:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); else does nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if enabled():
        dist.barrier()


def shard(items: list) -> list:
    """This rank's share of a list (every world_size-th item)."""
    return items[rank() :: world_size()]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging)."""
    if enabled():
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def shutdown() -> None:
    if enabled():
        dist.destroy_process_group()
