"""Data parallelism over training examples with torch.distributed (architecture §8).

Under ``torchrun``/``accelerate launch`` each rank takes every ``world``-th example; sums (factors,
query gradients, influence columns) are all-reduced. Single-process runs use the same code with a
world of one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int) -> list[int]:
    """The example indices this rank handles."""
    rank, size = world()
    return list(range(rank, n, size))


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op on one process)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def is_main() -> bool:
    return world()[0] == 0
