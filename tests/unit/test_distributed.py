"""Data parallelism with torch.distributed (gloo on CPU): two ranks give the single-process
influence, so the sums (query gradients, K-FAC factors, EK-FAC eigenvalues, scores) are all-reduced
exactly once."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_ctx
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def _influence(tmp_path, estimator: str) -> torch.Tensor:
    ctx = make_ctx(tmp_path, batch_size=2)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    return get_registry().build("estimator", estimator).influence(ctx, train, query)


def _worker(rank: int, world: int, init: str, tmp_path, estimator: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = _influence(tmp_path / f"rank{rank}", estimator)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("estimator", "rtol"), [("grad_dot", 1e-5), ("ekfac", 1e-4)])
def test_two_gloo_ranks_match_one_process(tmp_path, estimator, rtol):
    single = _influence(tmp_path / "single", estimator)
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", tmp_path, estimator, out), nprocs=2,
             join=True)
    both = torch.load(out, weights_only=True)
    torch.testing.assert_close(both, single, rtol=rtol, atol=rtol / 10 * single.abs().max().item())
