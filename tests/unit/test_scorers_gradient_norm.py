"""gradient_norm: the per-layer norm of the summed validation-loss gradient, against plain autograd
with one backward pass per example."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.data import IGNORE
from layerif_core.pipeline import load_task_splits, score_task


def reference_norms(ctx, split) -> list[float]:
    model = ctx.model
    model.zero_grad()
    for ids, labels in zip(split.input_ids, split.labels, strict=True):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:]),
                                                 ignore_index=IGNORE, reduction="sum")
        loss.backward()
    out = [math.sqrt(sum(float(tm.grad_matrix().double().square().sum()) for tm in layer))
           for layer in ctx.layer_map.layers]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_norm_matches_autograd(tmp_path, arch):
    ctx = make_ctx(tmp_path, model=tiny_model(arch), batch_size=2, scorer={"name": "gradient_norm"})
    scores = score_task(ctx, ctx.config.tasks[0])
    _, validation = load_task_splits(ctx, ctx.config.tasks[0])
    want = torch.tensor(reference_norms(ctx, validation))
    assert scores.scorer == "gradient_norm" and scores.higher_is_better is False
    assert scores.details["n_examples"] == len(validation)
    torch.testing.assert_close(scores.values, want.float(), rtol=1e-4, atol=1e-6)


def test_normalize_divides_by_sqrt_of_parameter_count(tmp_path):
    plain = make_ctx(tmp_path / "a", scorer={"name": "gradient_norm"})
    norm = make_ctx(tmp_path / "b", scorer={"name": "gradient_norm", "options": {"normalize": True}})
    a = score_task(plain, plain.config.tasks[0]).values
    b = score_task(norm, norm.config.tasks[0]).values
    counts = torch.tensor(plain.layer_map.num_params(), dtype=torch.float32)
    torch.testing.assert_close(b, a / counts.sqrt(), rtol=1e-5, atol=0)


def test_model_is_left_as_it_was(tmp_path):
    model = tiny_model()
    model.get_input_embeddings().weight.requires_grad_(False)
    ctx = make_ctx(tmp_path, model=model, scorer={"name": "gradient_norm"})
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    score_task(ctx, ctx.config.tasks[0])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_squared_norm_equals_grad_dot_self_influence_sum(tmp_path):
    # with train = validation, Σ_i I_grad_dot[l, i] = Σ_i q^lᵀ g_i^l = ‖q^l‖²
    split = {"source": "bundled:capitals", "split": "validation", "limit": 4, "max_length": 96}
    tasks = [{"name": "same", "train": split, "validation": split}]
    ctx = make_ctx(tmp_path, tasks=tasks, scorer={"name": "gradient_norm"})
    norms = score_task(ctx, ctx.config.tasks[0]).values.double()
    from layerif_core.registry import get_registry

    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    influence = get_registry().build("estimator", "grad_dot").influence(ctx, train, query)
    torch.testing.assert_close(norms.square(), influence.double().sum(dim=1), rtol=1e-4, atol=0)
