"""Factors as a stream (architecture §8): module partitions forced by a tiny memory budget give the
same influence as one partition, the disk-offloaded store equals the in-memory one, a shared-input
group's A equals each member's own input covariance, finished groups are skipped on a rerun, and
bad budgets or non-finite factors stop with the module named."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx
from layerif_core.errors import ConfigError, NumericalError
from layerif_core.estimators.factors import decompose_group, fit_covariances, module_groups
from layerif_core.estimators.memory import (
    GB,
    Group,
    correction_bytes,
    correction_reserve,
    covariance_bytes,
    influence_bytes,
    influence_reserve,
    plan_partitions,
)
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


def _setup(tmp_path):
    ctx = make_ctx(tmp_path, batch_size=3, layers={"modules": "all"})
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    return ctx, train, query


def _smallest_budget_gb(ctx, train) -> float:
    """The budget that just fits the largest group in every stage (so each partition holds few)."""
    groups = module_groups(ctx, train)
    need = max(max(covariance_bytes(g), correction_bytes(g) + correction_reserve(groups, 3),
                   influence_bytes(g) + influence_reserve(groups)) for g in groups)
    return need * 1.0001 / GB


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_partitions_forced_by_a_tiny_budget_give_the_same_influence(tmp_path, name):
    ctx, train, query = _setup(tmp_path / "one")
    whole = get_registry().build("estimator", name).influence(ctx, train, query)
    ctx2, train2, query2 = _setup(tmp_path / "many")
    budget = _smallest_budget_gb(ctx2, train2)
    est = get_registry().build("estimator", name, {"memory_budget_gb": budget})
    parted = est.influence(ctx2, train2, query2)
    plan = ctx2.run_dir.manifest["steps"][f"{est.store.root}/eigen"]["plan"]
    assert plan["P"] > 2
    assert sorted(n for p in plan["partitions"] for n in p["modules"]) == sorted(
        tm.name for tm in ctx2.layer_map.modules())
    assert est.plan.P > 1
    assert whole.abs().max() > 0
    torch.testing.assert_close(parted, whole, rtol=1e-5, atol=1e-5 * whole.abs().max().item())


def test_disk_offloaded_store_equals_the_in_memory_one(tmp_path):
    ctx, train, query = _setup(tmp_path / "ram")
    ram = get_registry().build("estimator", "ekfac", {"factor_offload": "cpu"})
    i_ram = ram.influence(ctx, train, query)
    ctx2, train2, query2 = _setup(tmp_path / "disk")
    disk = get_registry().build("estimator", "ekfac", {"factor_offload": "disk"})
    i_disk = disk.influence(ctx2, train2, query2)
    assert disk.store._ram == {} and ram.store._ram
    torch.testing.assert_close(i_disk, i_ram, rtol=0, atol=0)
    for key in ("QA", "QS"):
        tm = ctx.layer_map.modules()[0]
        torch.testing.assert_close(disk._eigen[f"{tm.name}.{key}"], ram._eigen[f"{tm.name}.{key}"],
                                   rtol=0, atol=0)


def test_shared_inputs_are_grouped_q_k_v_and_gate_up(tmp_path):
    ctx, train, _ = _setup(tmp_path)
    groups = module_groups(ctx, train)
    shorts = [[tm.short for tm in g.modules] for g in groups if g.modules[0].layer == 0]
    assert ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] in shorts
    assert ["mlp.gate_proj", "mlp.up_proj"] in shorts
    assert ["self_attn.o_proj"] in shorts and ["mlp.down_proj"] in shorts
    assert len(groups) == 4 * len(ctx.layer_map)


def _own_input_covariance(ctx, train, tm) -> torch.Tensor:
    """``Σ ã ãᵀ / #real tokens`` of one module's input, from a forward hook on that module alone."""
    d = tm.d_in + int(tm.has_bias)
    total = torch.zeros(d, d, dtype=torch.float64)
    count = 0.0
    for batch in train.batches(ctx.batch_size, ctx.pad_id):
        seen = {}

        def keep(_m, inputs, _out, seen=seen) -> None:
            seen["a"] = inputs[0].detach()

        handle = tm.module.register_forward_hook(keep)
        with torch.no_grad():
            ctx.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        handle.remove()
        a = seen["a"].double()[batch.attention_mask.bool()]  # [real tokens, d_in]
        if tm.has_bias:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
        total += a.T @ a
        count += a.shape[0]
    return total / count


@pytest.mark.parametrize("arch,batch_size", [("llama", 3), ("llama", 1), ("gpt2", 3), ("gpt2", 1)])
def test_a_shared_input_group_has_each_members_own_input_covariance(tmp_path, arch, batch_size):
    # batch size 1: no padding, the mask is skipped; gpt2: biases (ã has a 1 appended)
    from conftest import tiny_model

    ctx = make_ctx(tmp_path, model=tiny_model(arch), batch_size=batch_size, layers={"modules": "all"})
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    every = module_groups(ctx, train)
    groups = [g for g in every if len(g.modules) > 1]
    assert bool(groups) == (arch == "llama")  # gpt2's q/k/v are one module
    cov = fit_covariances(ctx, train, get_registry().build("estimator", "ekfac").options, every)
    for g in every:
        for tm in g.modules:
            want = _own_input_covariance(ctx, train, tm)
            torch.testing.assert_close(cov[f"{g.key}.A"].double(), want, rtol=1e-5,
                                       atol=1e-6 * want.abs().max().item())
    alone = [Group([tm]) for g in groups for tm in g.modules]
    cov_alone = fit_covariances(ctx, train, get_registry().build("estimator", "ekfac").options, alone)
    for g in groups:
        for tm in g.modules:
            torch.testing.assert_close(cov_alone[f"{tm.name}.A"], cov[f"{g.key}.A"])
            torch.testing.assert_close(cov_alone[f"{tm.name}.S"], cov[f"{tm.name}.S"])


def test_a_rerun_refits_only_the_groups_whose_files_are_missing(tmp_path):
    ctx, train, query = _setup(tmp_path)
    first = get_registry().build("estimator", "ekfac")
    want = first.influence(ctx, train, query)
    gone = first.groups[1]
    first.store.path("eigen", gone).unlink()
    first.store.path("lambda", gone).unlink()
    again = get_registry().build("estimator", "ekfac")
    got = again.influence(ctx, train, query)
    steps = ctx.run_dir.manifest["steps"]
    for stage in ("eigen", "lambda"):
        entry = steps[f"{again.store.root}/{stage}"]
        assert (entry["fitted"], entry["resumed"]) == (1, len(first.groups) - 1)
        assert entry["plan"]["partitions"][0]["modules"] == gone.names
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_a_budget_below_one_module_names_the_module_and_its_need(tmp_path):
    ctx, train, query = _setup(tmp_path)
    est = get_registry().build("estimator", "ekfac", {"memory_budget_gb": 1e-9})
    with pytest.raises(ConfigError, match=r"module model\.layers\.\d+\.\S+ alone needs [\d.]+ [KMG]B on "
                                          r"the device, above the memory budget.*raise memory_budget_gb"):
        est.fit(ctx, train)


def test_first_fit_packing_uses_the_fewest_partitions_and_keeps_model_order(tmp_path):
    ctx, train, _ = _setup(tmp_path)
    groups = module_groups(ctx, train)
    sizes = {g.key: covariance_bytes(g) for g in groups}
    budget = sum(sizes.values()) // 2 + max(sizes.values())
    plan = plan_partitions("covariance", groups, covariance_bytes, budget)
    assert plan.P == 2 and all(need <= budget for need in plan.needs)
    order = [g.key for g in groups]
    for part in plan.partitions:
        keys = [g.key for g in part]
        assert keys == sorted(keys, key=order.index)
    whole = plan_partitions("covariance", groups, covariance_bytes, sum(sizes.values()))
    assert whole.P == 1


def test_a_non_finite_covariance_is_refused_with_the_module_named(tmp_path):
    ctx, train, _ = _setup(tmp_path)
    g = module_groups(ctx, train)[0]
    cov = fit_covariances(ctx, train, get_registry().build("estimator", "ekfac").options, [g])
    bad = g.modules[1]
    cov[f"{bad.name}.S"][0, 0] = float("nan")
    with pytest.raises(NumericalError, match=rf"output-gradient covariance S of module "
                                             rf"{bad.name} is not finite.*float32"):
        decompose_group(g, cov, torch.float16)
