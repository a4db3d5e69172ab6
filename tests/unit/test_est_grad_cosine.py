"""``grad_cosine`` equals the cosine of explicit per-example autograd gradients, per layer."""

from __future__ import annotations

import pytest
import torch
from test_est_exact import example_grads, small_ctx

from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grad_cosine_equals_explicit_cosines(tmp_path, arch):
    ctx = small_ctx(tmp_path, arch, n_train=5, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    got = get_registry().build("estimator", "grad_cosine").influence(ctx, train, query)
    g_train, g_query = example_grads(ctx, train), example_grads(ctx, query)
    want = torch.zeros(len(ctx.layer_map), len(train))
    for l in range(len(ctx.layer_map)):
        q = sum(e[l] for e in g_query)
        for i, e in enumerate(g_train):
            want[l, i] = float(q @ e[l] / (q.norm() * e[l].norm()))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.abs().max() <= 1 + 1e-6
