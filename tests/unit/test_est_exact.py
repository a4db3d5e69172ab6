"""``exact`` against a brute-force reference: per-example autograd gradients, an explicit
per-layer Fisher block, and a dense solve; and its refusal when the block is too large."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.data import IGNORE
from layerif_core.errors import ModelError
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def example_grads(ctx, split) -> list[list[torch.Tensor]]:
    """Per example, per layer: the flattened float64 gradient of L(z) w.r.t. the layer's tracked
    weights (data labels), from one backward pass per example."""
    out = []
    for i in range(len(split)):
        ids = torch.tensor([split.input_ids[i]])
        labels = torch.tensor([split.labels[i]])
        ctx.model.zero_grad()
        logits = ctx.model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                                                 reduction="sum")
        loss.backward()
        out.append([torch.cat([tm.grad_matrix().flatten() for tm in layer]).double()
                    for layer in ctx.layer_map.layers])
    return out


def reference_influence(ctx, train, query, relative: float = 0.1, damping: float | None = None):
    """``I[l, i] = qᵀ (G_l + D_l)^{-1} g_i`` with ``G_l = mean_i g_i g_iᵀ`` formed explicitly and
    ``D_l`` = relative · (mean diagonal of each module's block) on that module (or ``damping``)."""
    g_train, g_query = example_grads(ctx, train), example_grads(ctx, query)
    rows = []
    for l, layer in enumerate(ctx.layer_map.layers):
        g = torch.stack([e[l] for e in g_train])  # [N, P]
        block = g.T @ g / len(train)
        diag, start = [], 0
        for tm in layer:
            p = tm.d_out * (tm.d_in + int(tm.has_bias))
            lam = damping if damping is not None else relative * block.diagonal()[start:start + p].mean()
            diag.append(torch.full((p,), float(lam), dtype=torch.float64))
            start += p
        q = sum(e[l] for e in g_query)
        v = torch.linalg.solve(block + torch.diag(torch.cat(diag)), q)
        rows.append(g @ v)
    return torch.stack(rows).float()


def small_ctx(tmp_path, arch="llama", n_train=8, n_query=3, **fields):
    """Attention modules only by default (q, k, v, o: ~1k parameters per layer) to keep G small."""
    fields.setdefault("layers", {"modules": "attention"})
    tasks = [{"name": "t", "train": {"source": "bundled:capitals", "limit": n_train, "max_length": 96},
              "validation": {"source": "bundled:capitals", "split": "validation", "limit": n_query,
                             "max_length": 96}}]
    return make_ctx(tmp_path, model=tiny_model(arch), tasks=tasks, **fields)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exact_equals_brute_force_reference(tmp_path, arch):
    """To 1e-5 where the solve is well conditioned (relative damping 10: the block has rank N ≪ P,
    so at 0.1 the float32 gradients' rounding is amplified ~P/N·10 times; checked at 2e-3 there)."""
    ctx = small_ctx(tmp_path, arch)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    reg = get_registry()
    got = reg.build("estimator", "exact", {"fisher": "empirical", "relative_damping": 10}
                    ).influence(ctx, train, query)
    want = reference_influence(ctx, train, query, relative=10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    got = reg.build("estimator", "exact", {"fisher": "empirical"}).influence(ctx, train, query)
    want = reference_influence(ctx, train, query)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())


@pytest.mark.slow
def test_exact_with_absolute_damping(tmp_path):
    ctx = small_ctx(tmp_path)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", "exact", {"fisher": "empirical", "damping": 0.3})
    got = est.influence(ctx, train, query)
    want = reference_influence(ctx, train, query, damping=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_exact_refuses_a_block_too_large_with_its_size(tmp_path):
    ctx = small_ctx(tmp_path)
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    p = max(ctx.layer_map.num_params())
    est = get_registry().build("estimator", "exact", {"max_block_params": p - 1})
    with pytest.raises(ModelError, match=rf"layer \d has {p} tracked parameters.*{p}×{p}.*GiB"):
        est.fit(ctx, train)
