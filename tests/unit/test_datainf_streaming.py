"""DataInf streamed in Kronecker form (no per-example gradient kept): the per-example squared norms
both ways against formed gradients, the whole estimator against per-example autograd gradients, and
against the stored form on every kind of input (modules, biases, padding, mean loss, fixed damping,
zero gradients, module partitions); ``auto`` streams when the gradients exceed ``memory_gb``."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.data import IGNORE
from layerif_core.estimators import datainf
from layerif_core.estimators.datainf import (
    DataInf,
    DataInfOptions,
    direct_norms,
    example_gradients,
    gradient_bytes,
    gram_norms,
)
from layerif_core.layers import TrackedModule
from layerif_core.pipeline import load_task_splits

BRANCH_FACTOR = {"gram": 0.0, "direct": math.inf}  # _GRAM_FACTOR forcing each way of computing s


def influence(ctx, train, query, **options) -> torch.Tensor:
    return DataInf(DataInfOptions(**options)).influence(ctx, train, query)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def record(ctx, train) -> dict:
    return ctx.run_dir.manifest["datainf"][train.name]


def lengths_vary_within_a_batch(ctx, split) -> bool:
    sizes = [len(x) for x in split.input_ids]
    return any(len(set(sizes[k: k + ctx.batch_size])) > 1 for k in range(0, len(sizes), ctx.batch_size))


def fake_module(d_in: int, d_out: int, has_bias: bool) -> TrackedModule:
    return TrackedModule("m", "m", 0, torch.nn.Identity(), d_in, d_out, has_bias, False)


@pytest.mark.parametrize("has_bias", [False, True])
def test_gram_and_direct_norms_equal_the_formed_gradients_with_padding(has_bias):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64).float()
    delta = torch.randn(3, 7, 4, generator=gen)
    delta[0, 4:] = 0  # shorter examples: padded positions carry no gradient
    delta[2, 2:] = 0
    q = torch.randn(4, 5 + int(has_bias), generator=gen)
    tm = fake_module(5, 4, has_bias)
    g = example_gradients(tm, a, delta).double()  # [B, d_out·d_in']
    want_s, want_c = g.pow(2).sum(dim=1), g @ q.double().flatten()
    torch.testing.assert_close(gram_norms(a, delta, has_bias), want_s, rtol=1e-6, atol=0)
    c, s = direct_norms(a, delta, q[:, :5].contiguous(), q[:, 5] if has_bias else None)
    torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0)
    torch.testing.assert_close(c, want_c, rtol=1e-6, atol=1e-6 * want_c.abs().max().item())


def test_the_cheaper_norm_is_chosen_by_the_batch_length():
    tm = fake_module(576, 576, False)  # Gram ~T²·1152 vs direct ~T·331,776: Gram below T = 288
    assert datainf.use_gram(128, tm) and not datainf.use_gram(512, tm)


def per_example_autograd(model, split, modules) -> dict[str, torch.Tensor]:
    """``g_i`` of every tracked tensor (bias column included) by one backward per example."""
    out = {tm.name: [] for tm in modules}
    for ids, labels in zip(split.input_ids, split.labels, strict=True):
        model.zero_grad()
        ids, labels = torch.tensor([ids]), torch.tensor([labels])
        logits = model(input_ids=ids).logits[:, :-1].float()
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                          ignore_index=IGNORE, reduction="sum").backward()
        for tm in modules:
            out[tm.name].append(tm.grad_matrix().flatten().double())
    return {k: torch.stack(v) for k, v in out.items()}


def test_streaming_equals_datainf_on_per_example_autograd_gradients(tmp_path):
    ctx = make_ctx(tmp_path, model=tiny_model("qwen2"), layers={"modules": "all"})  # q/k/v biases
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    assert lengths_vary_within_a_batch(ctx, train)
    modules = ctx.layer_map.modules()
    assert any(tm.has_bias for tm in modules)
    grads = per_example_autograd(ctx.model, train, modules)
    q = {k: v.sum(dim=0) for k, v in per_example_autograd(ctx.model, query, modules).items()}
    n = len(train)
    want = torch.zeros(len(ctx.layer_map), n, dtype=torch.float64)
    for tm in modules:  # (1/(nλ)) Σ_i (qᵀg_k − (qᵀg_i)(g_iᵀg_k)/(λ + ‖g_i‖²)) with the Gram matrix
        g = grads[tm.name]
        lam = float(g.pow(2).mean(dim=1).mean() / 10)
        gram, c = g @ g.T, g @ q[tm.name]
        want[tm.layer] += (n * c - (c / (lam + gram.diagonal())) @ gram) / (n * lam)
    got = influence(ctx, train, query, mode="streaming")
    assert_same(got, want.float())


@pytest.mark.parametrize("arch,layers,branch", [
    ("llama", "all", "gram"), ("llama", "all", "direct"), ("llama", "attention", "gram"),
    ("qwen2", "attention", "gram"), ("qwen2", "attention", "direct"),  # q/k/v with biases
    ("gpt2", "all", "direct")])  # Conv1D, every linear with a bias
def test_streaming_equals_stored(tmp_path, monkeypatch, arch, layers, branch):
    monkeypatch.setattr(datainf, "_GRAM_FACTOR", BRANCH_FACTOR[branch])
    ctx = make_ctx(tmp_path, model=tiny_model(arch), layers={"modules": layers})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    stored = influence(ctx, train, query, mode="stored")
    assert record(ctx, train)["mode"] == "stored"
    streamed = influence(ctx, train, query, mode="streaming")
    rec = record(ctx, train)
    assert rec["mode"] == "streaming" and rec["norm_branches"][branch] > 0
    assert rec["norm_branches"][{"gram": "direct", "direct": "gram"}[branch]] == 0
    assert_same(streamed, stored)


def test_padding_adds_nothing(tmp_path):
    model = tiny_model()
    ctx = make_ctx(tmp_path / "batched", model=model, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    assert lengths_vary_within_a_batch(ctx, train)
    batched = influence(ctx, train, query, mode="streaming")
    one = make_ctx(tmp_path / "one", model=model, batch_size=1, layers={"modules": "all"})
    assert_same(batched, influence(one, *load_task_splits(one, one.config.tasks[0]), mode="streaming"))


def test_streaming_equals_stored_with_the_mean_loss(tmp_path):
    ctx = make_ctx(tmp_path, layers={"modules": "all"},
                   scorer={"loss": {"tokens": "all", "reduction": "mean"}})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    assert train.reduction == "mean" and query.reduction == "mean"
    assert_same(influence(ctx, train, query, mode="streaming"),
                influence(ctx, train, query, mode="stored"))


def test_streaming_equals_stored_with_a_fixed_damping(tmp_path):
    ctx = make_ctx(tmp_path, layers={"modules": "attention"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    stored = influence(ctx, train, query, mode="stored", damping=0.05)
    streamed = influence(ctx, train, query, mode="streaming", damping=0.05)
    assert set(record(ctx, train)["lambdas"].values()) == {0.05}
    assert_same(streamed, stored)


def test_zero_gradient_tensors_add_zero_with_a_warning(tmp_path, caplog):
    from test_datainf import lora_model

    model = lora_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (".layers.1." in name and "lora_B" in name) or (".layers.2." in name and "lora_" in name):
                p.zero_()  # block 1: every lora_A gradient is zero; block 2: every gradient is
    ctx = make_ctx(tmp_path, model=model, layers={"lora_only": True})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    stored = influence(ctx, train, query, mode="stored")
    with caplog.at_level(logging.WARNING, logger="layerif"):
        streamed = influence(ctx, train, query, mode="streaming")
    messages = [r.getMessage() for r in caplog.records]
    assert any("zero training gradients in block 1" in m and "lora_A" in m for m in messages)
    assert any("block 2" in m and "scored 0" in m for m in messages)
    assert streamed[2].eq(0).all() and streamed[1].ne(0).any() and torch.isfinite(streamed).all()
    assert len(record(ctx, train)["zero_gradient_modules"]) == 2 + 4
    assert_same(streamed, stored)


def test_partitioned_streaming_equals_one_partition(tmp_path):
    ctx = make_ctx(tmp_path, batch_size=3, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    whole = influence(ctx, train, query, mode="streaming")
    assert record(ctx, train)["plan"]["P"] == 1
    needs = [8 * tm.d_out * (tm.d_in + int(tm.has_bias)) + 24 * len(train)
             for tm in ctx.layer_map.modules()]  # q and u in float32, c, s and gᵀu in float64
    budget = max(max(needs), sum(needs) // 3)
    parted = influence(ctx, train, query, mode="streaming", memory_budget_gb=budget / 1024**3)
    plan = record(ctx, train)["plan"]
    assert plan["P"] >= 3 and max(p["gb"] for p in plan["partitions"]) <= budget / 1024**3
    assert sorted(n for p in plan["partitions"] for n in p["modules"]) == sorted(
        tm.name for tm in ctx.layer_map.modules())
    assert_same(parted, whole)


def test_auto_streams_when_the_gradients_exceed_memory_gb(tmp_path):
    ctx = make_ctx(tmp_path, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    need_gb = gradient_bytes(ctx, len(train)) / 1024**3
    influence(ctx, train, query, memory_gb=2 * need_gb)
    assert record(ctx, train)["mode"] == "stored"
    influence(ctx, train, query, memory_gb=need_gb / 2)
    assert record(ctx, train)["mode"] == "streaming"
