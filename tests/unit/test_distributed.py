"""Data parallelism with torch.distributed (gloo on CPU): two ranks give the single-process scores."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_ctx
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def _influence(tmp_path) -> torch.Tensor:
    ctx = make_ctx(tmp_path, batch_size=2)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    return get_registry().build("estimator", "grad_dot").influence(ctx, train, query)


def _worker(rank: int, world: int, init: str, tmp_path, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = _influence(tmp_path / f"rank{rank}")
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    single = _influence(tmp_path / "single")
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", tmp_path, out), nprocs=2, join=True)
    both = torch.load(out, weights_only=True)
    torch.testing.assert_close(both, single, rtol=1e-5, atol=1e-6 * single.abs().max().item())
