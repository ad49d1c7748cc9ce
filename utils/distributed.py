"""torchrun / DistributedDataParallel helpers: one process per device."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError


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


def init_distributed(use_cuda: bool, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``); a single process otherwise. NCCL on CUDA, gloo on CPU;
    a collective that waits longer than ``timeout_minutes`` fails.

    The group's keys in torchrun's store are set apart per restart
    (``TORCHELASTIC_RESTART_COUNT``): a group that ``torchrun --max-restarts`` starts
    again after a worker died would otherwise read the dead group's addresses there
    and fail to connect."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=dist.PrefixStore(f"fssd/restart_{restart}", store),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
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


def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so that each
    rank's share of an evaluation runs the model rank 0 saves."""
    if not context.is_distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def gather_to_main(
    items: list[Any], owned: Iterable[int], context: DistributedContext
) -> list[Any] | None:
    """A list indexed like ``items`` on rank 0, each entry taken from the rank that
    ``owned`` it (each rank computed its share); None on the other ranks; ``items``
    itself in one process."""
    if not context.is_distributed:
        return items
    share = {index: items[index] for index in owned}
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(share, gathered, dst=0)
    if gathered is None:
        return None
    merged: list[Any] = [None] * len(items)
    for part in gathered:
        for index, item in part.items():
            merged[index] = item
    return merged


def cleanup(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


# What gloo and NCCL say when a peer process died or a collective timed out (they raise
# plain RuntimeErrors as well as torch.distributed.DistError).
_COLLECTIVE_FAILURES = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "gloo",
    "nccl",
)


class CollectiveError(UserError):
    """A collective failed: another process died or stalled past the timeout."""


def collective_error(
    error: BaseException, context: DistributedContext, timeout_minutes: float, resume: str
) -> CollectiveError | None:
    """One line for a collective's failure in a torchrun job (None when ``error`` is
    something else): which rank saw it, that another process died or stalled past
    ``train.dist_timeout_minutes``, and ``resume``, how to continue."""
    if not context.is_distributed or not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    if not isinstance(error, dist.DistError) and not any(
        marker in text.lower() for marker in _COLLECTIVE_FAILURES
    ):
        return None
    first_line = text.splitlines()[0] if text else type(error).__name__
    return CollectiveError(
        f"rank {context.rank} of {context.world_size}: a collective with the other "
        f"processes failed ({first_line[:200]}): another process died (torchrun's summary "
        f"names it) or stalled longer than train.dist_timeout_minutes={timeout_minutes:g}; "
        f"{resume}"
    )
