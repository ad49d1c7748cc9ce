"""torchrun / DistributedDataParallel helpers: one process per device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistributedContext:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``); a single process otherwise. NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """``value`` summed over the ranks (a copy; ``value`` itself when not distributed)."""
    if not context.is_distributed:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value


def broadcast_from_main(value: float, context: DistributedContext, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (so all ranks take the same branch)."""
    if not context.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def cleanup(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
