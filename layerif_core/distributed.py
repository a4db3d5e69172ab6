"""torch.distributed for every estimator (architecture §8).

Under ``torchrun``/``accelerate launch`` each rank takes every ``world``-th example and sums
(factors, query gradients, influence columns) are all-reduced; the eigendecompositions are split
over ranks (module-parallel: rank r decomposes groups r, r+W, …) and broadcast. A model that does
not fit one device is sharded with FSDP (:func:`shard_model`, ``fully_shard``): the capture hooks sit
on the linear modules and see ``a`` and ``δ`` as before, and every rank runs the same number of
batches (:func:`batches_to_run`) because each forward gathers parameters from all ranks.
Single-process runs use the same code with a world of one.
"""

from __future__ import annotations

import atexit

import torch
import torch.distributed as dist
from torch import nn

from layerif_core.errors import DistributedError


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int) -> list[int]:
    """The example indices this rank handles."""
    rank, size = world()
    return list(range(rank, n, size))


def lost_rank(what: str, exc: BaseException) -> DistributedError:
    """The error of a collective that failed because another rank stopped (gloo: "Connection
    closed by peer"; NCCL: a timeout or an abort): which rank saw it, in what, and how to resume."""
    rank, size = world()
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return DistributedError(
        f"rank {rank} of {size} lost the other ranks during {what} ({detail}): a rank died or was "
        "stopped, see its log; finished stages and factor groups stay in the run directory, and "
        "relaunching the same command resumes from them.")


def all_reduce_(tensor: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    """Sum (or ``op``) ``tensor`` over ranks in place (a no-op on one process)."""
    if world()[1] > 1:
        try:
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        except RuntimeError as exc:
            raise lost_rank("an all-reduce", exc) from exc
    return tensor


def all_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over ranks."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], device=device, dtype=torch.int64)
    return int(all_reduce_(t, "MAX").item())


def broadcast_(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s (a no-op on one process)."""
    if world()[1] > 1:
        try:
            dist.broadcast(tensor, src=src)
        except RuntimeError as exc:
            raise lost_rank(f"a broadcast from rank {src}", exc) from exc
    return tensor


def owner(index: int) -> int:
    """The rank that decomposes the ``index``-th group (module-parallel decomposition)."""
    return index % world()[1]


def is_main() -> bool:
    return world()[0] == 0


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a submodule) is wrapped with FSDP's ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_model(model: nn.Module, blocks: list[nn.Module], device: torch.device | None = None
                ) -> nn.Module:
    """Shard ``model`` over the ranks with FSDP2: each decoder block, then the root, on a 1-D mesh of
    ``device``'s type (the shards move there). In a single process the model just moves to
    ``device``.

    Call after ``init_process_group`` and before building the run context; the model's forward and
    backward then gather each block's parameters only while it runs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    size = world()[1]
    device = device or next(model.parameters()).device
    if size == 1:
        return model.to(device)
    mesh = init_device_mesh(device.type, (size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def batches_to_run(own: int, model: nn.Module, device: torch.device) -> int:
    """Batches this rank runs: its own, or (FSDP) the most any rank has, so collectives match."""
    return all_max(own, device) if is_sharded(model) else own


def init_from_env() -> None:
    """Join the process group a launcher (``torchrun``) describes in the environment: NCCL on GPUs,
    gloo on CPUs; each rank takes the GPU of its ``LOCAL_RANK``. A no-op in a single process or
    when the group is already initialised."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # leave the group while the interpreter is whole: a group still open at exit can abort the
    # process in gloo's worker threads (SIGABRT) after the results are written
    atexit.register(_leave_group)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def placement_error(model_gib: float, free_gib: float, device: torch.device) -> str | None:
    """The message for a model that does not fit ``device`` (None when it fits with 10% to spare):
    what it needs, what is free, and how to shard it with FSDP."""
    if model_gib <= 0.9 * free_gib:
        return None
    gpus = max(2, int(-(-model_gib // max(0.6 * free_gib, 1e-9))) + 1)
    return (f"the model's weights take {model_gib:.1f} GiB but {device} has {free_gib:.1f} GiB free, "
            f"too little for them and the activations; shard it over GPUs with FSDP: set "
            f"model.fsdp: true and launch with `torchrun --nproc_per_node {gpus} -m layerif_core.cli "
            "run CONFIG` (or smaller: model.dtype: bfloat16, fewer modules).")
