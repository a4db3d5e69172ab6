"""DataInf's stored per-example gradients planned like the curvature factors (architecture §8): a
device budget smaller than all of them runs the train pass once per module partition and gives the
same influence as one partition (the streamed form's partitions: test_datainf_streaming.py)."""

from __future__ import annotations

import torch

from conftest import make_ctx
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def test_partitioned_per_example_gradients_give_the_same_influence(tmp_path):
    ctx = make_ctx(tmp_path, batch_size=3, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    whole = get_registry().build("estimator", "datainf", {"mode": "stored"}).influence(ctx, train, query)
    largest = max(4 * len(train) * tm.d_out * (tm.d_in + int(tm.has_bias))
                  for tm in ctx.layer_map.modules())
    est = get_registry().build("estimator", "datainf", {"mode": "stored",
                                                        "memory_budget_gb": 2 * largest / 1024**3})
    parted = est.influence(ctx, train, query)
    plan = ctx.run_dir.manifest["datainf"][train.name]["plan"]
    assert plan["P"] > 3 and ctx.run_dir.manifest["datainf"][train.name]["mode"] == "stored"
    assert sorted(n for p in plan["partitions"] for n in p["modules"]) == sorted(
        tm.name for tm in ctx.layer_map.modules())
    assert whole.abs().max() > 0
    torch.testing.assert_close(parted, whole, rtol=1e-6, atol=1e-6 * whole.abs().max().item())
