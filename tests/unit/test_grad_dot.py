"""grad_dot's I[l, i] equals the inner product of explicit per-example autograd gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, make_ctx, tiny_model
from layerif_core.data import IGNORE
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def explicit_layer_grads(ctx, split) -> list[list[torch.Tensor]]:
    """Per example, per layer: the flattened gradient of L(z) w.r.t. the layer's tracked weights,
    from one backward pass per example (the reference, independent of the hooks)."""
    model = ctx.model
    out = []
    for i in range(len(split)):
        ids = torch.tensor([split.input_ids[i]])
        labels = torch.tensor([split.labels[i]])
        model.zero_grad()
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=IGNORE, reduction="sum")
        loss.backward()
        out.append([torch.cat([tm.grad_matrix().flatten() for tm in layer])
                    for layer in ctx.layer_map.layers])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_grad_dot_equals_explicit_inner_products(tmp_path, arch):
    ctx = make_ctx(tmp_path, model=tiny_model(arch))
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", "grad_dot")
    got = est.influence(ctx, train, query)

    g_train = explicit_layer_grads(ctx, train)
    g_query = explicit_layer_grads(ctx, query)
    q = [sum(g[l] for g in g_query) for l in range(len(ctx.layer_map))]
    want = torch.tensor([[float(q[l] @ g_train[i][l]) for i in range(len(train))]
                         for l in range(len(ctx.layer_map))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_grad_dot_independent_of_batch_size(tmp_path):
    a = make_ctx(tmp_path / "a", batch_size=1)
    b = make_ctx(tmp_path / "b", batch_size=5)
    est = get_registry().build("estimator", "grad_dot")
    ia = est.influence(a, *load_task_splits(a, a.config.tasks[0]))
    ib = est.influence(b, *load_task_splits(b, b.config.tasks[0]))
    torch.testing.assert_close(ia, ib, rtol=1e-5, atol=1e-7 * ia.abs().max().item())
