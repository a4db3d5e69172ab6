"""EK-FAC under torch.distributed (gloo, two ranks): factors and eigenvalues are all-reduced, so the
influence equals the single-process one."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_ctx
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def _influence(tmp_path) -> torch.Tensor:
    ctx = make_ctx(tmp_path, batch_size=2)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    return get_registry().build("estimator", "ekfac").influence(ctx, train, query)


def _worker(rank: int, world: int, init: str, tmp_path, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = _influence(tmp_path / f"rank{rank}")
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ekfac_on_two_gloo_ranks_matches_one_process(tmp_path):
    single = _influence(tmp_path / "single")
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", tmp_path, out), nprocs=2, join=True)
    both = torch.load(out, weights_only=True)
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())
