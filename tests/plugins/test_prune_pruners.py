"""Pruners on tiny real models: masks equal their definitions computed here, block by block through
the already-pruned blocks; SparseGPT reconstructs better than magnitude and Wanda; N:M holds."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_model
from layerif_core.layers import LayerMap
from layerif_prune.masks import magnitude_mask, smallest_mask, wanda_mask
from layerif_prune.options import PruneOptions
from layerif_prune.sequential import prune_blocks
from layerif_prune.sparsegpt import sparsegpt_prune

SPARSITIES = [0.3, 0.5, 0.7]


def windows(n: int = 6, t: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (n, t), generator=g)


def run(model, pruner: str, sparsities=SPARSITIES, pattern: str = "unstructured", ids=None,
        rounding: str = "exact"):
    opts = PruneOptions(pruner=pruner, pattern=pattern, batch_size=4, blocksize=8, rounding=rounding)
    lm = LayerMap(model)
    return lm, prune_blocks(model, lm, sparsities, opts, windows() if ids is None else ids)


def module_inputs(model, module, ids: torch.Tensor) -> torch.Tensor:
    """Inputs ``[N, d_in]`` of ``module`` over the tokens of ``ids``, by a full forward pass."""
    seen = []
    handle = module.register_forward_hook(
        lambda _m, inp, _o: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    handle.remove()
    return torch.cat(seen).double()


def row_counts(metric: torch.Tensor, sparsity: float, rounding: str) -> list[int]:
    """How many weights of each row Wanda prunes. floor: ⌊s·d_in⌋ each (the reference code). exact:
    round(s·d_out·d_in) in all, k = that // d_out in every row and one more in the rows whose
    (k+1)-th smallest score is the lowest, lower row first among equal ones."""
    d_out, d_in = metric.shape
    if rounding == "floor":
        return [int(d_in * sparsity)] * d_out
    total = round(sparsity * d_out * d_in)
    k = total // d_out
    following = [sorted(metric[r].tolist())[k] if k < d_in else 0.0 for r in range(d_out)]
    more = sorted(range(d_out), key=lambda r: (following[r], r))[:total - k * d_out]
    return [k + (r in more) for r in range(d_out)]


@pytest.mark.parametrize("rounding", ["exact", "floor"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_wanda_masks_equal_the_definition_through_pruned_blocks(arch, rounding):
    original = tiny_model(arch)
    pruned = copy.deepcopy(original)
    lm, masks = run(pruned, "wanda", rounding=rounding)
    reference = copy.deepcopy(original)
    ref_map = LayerMap(reference)
    ids = windows()
    for layer, modules in enumerate(ref_map.layers):
        for tm in modules:
            x = module_inputs(reference, tm.module, ids)  # through the blocks pruned so far
            w = tm.weight_matrix(tm.module.weight.data).double()
            metric = w.abs() * x.norm(dim=0)[None, :]
            counts = row_counts(metric, SPARSITIES[layer], rounding)
            expected = torch.zeros_like(metric, dtype=torch.bool)
            order = metric.argsort(dim=1)
            for row in range(metric.shape[0]):
                expected[row, order[row, :counts[row]]] = True
            assert torch.equal(masks[tm.name], expected), tm.name
            if rounding == "exact":  # the matrix's target, to the weight
                assert int(masks[tm.name].sum()) == round(SPARSITIES[layer] * metric.numel())
            else:
                assert len(set(counts)) == 1 and counts[0] < SPARSITIES[layer] * tm.d_in + 1
        for tm in modules:  # prune this block of the reference before computing the next inputs
            tm.weight_matrix(tm.module.weight.data).masked_fill_(masks[tm.name], 0)
    for tm, ref in zip(lm.modules(), ref_map.modules(), strict=True):
        assert torch.equal(tm.module.weight, ref.module.weight)


def test_magnitude_masks_equal_the_smallest_weights_of_each_matrix():
    original = tiny_model("llama")
    pruned = copy.deepcopy(original)
    lm, masks = run(pruned, "magnitude")
    for tm, orig in zip(lm.modules(), LayerMap(original).modules(), strict=True):
        w = orig.module.weight.data
        k = int(w.numel() * SPARSITIES[tm.layer])
        expected = torch.zeros(w.numel(), dtype=torch.bool)
        expected[w.abs().flatten().argsort()[:k]] = True
        assert torch.equal(masks[tm.name], expected.reshape(w.shape))
        assert torch.equal(tm.module.weight, torch.where(expected.reshape(w.shape), 0.0, w))


def test_row_masks_hold_exactly_k_of_the_smallest_even_with_ties():
    g = torch.Generator().manual_seed(0)
    metric = torch.rand(6, 40, generator=g)
    metric[1, :25] = 0.0  # an already-sparse row: 25 zeros tie below k = 12 and above it (k = 30)
    metric[2, ::2] = 0.5  # ties at the threshold
    for k in (1, 12, 30, 40):
        mask = smallest_mask(metric, k, dim=1)
        assert (mask.sum(dim=1) == k).all()
        for row in range(6):  # every kept entry is at least every pruned one
            kept = metric[row][~mask[row]]
            assert not len(kept) or metric[row][mask[row]].max() <= kept.min()


def block0_error(original, pruned, ids) -> float:
    """Σ over block 0's modules of ‖(W − Ŵ) Xᵀ‖², X = the module's inputs in the dense model."""
    total = 0.0
    for tm, new in zip(LayerMap(original).layers[0], LayerMap(pruned).layers[0], strict=True):
        x = module_inputs(original, tm.module, ids)
        diff = (tm.weight_matrix(tm.module.weight.data) - new.weight_matrix(new.module.weight.data)).double()
        total += float(((x @ diff.t()) ** 2).sum())
    return total


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    original = tiny_model("llama")
    ids = windows(n=8, t=32)
    errors = {}
    for pruner in ("magnitude", "wanda", "sparsegpt"):
        model = copy.deepcopy(original)
        run(model, pruner, [0.5] * 3, pattern, ids=ids)
        errors[pruner] = block0_error(original, model, ids)
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"], errors


def test_sparsegpt_matrix_error_beats_wanda_and_magnitude_on_correlated_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 64, generator=g)
    low_rank = torch.randn(512, 16, generator=g) @ torch.randn(16, 64, generator=g)
    x = low_rank + 0.1 * torch.randn(512, 64, generator=g)
    x = x * torch.linspace(0.2, 3.0, 64)[None, :]

    new, mask = sparsegpt_prune(w, 2 * x.t() @ x / len(x), 0.5)  # one block of 128 covers all 64
    err = {"sparsegpt": float(((x @ (w - new).t()) ** 2).sum())}
    for name, m in (("wanda", wanda_mask(w, (x ** 2).sum(0), 0.5)), ("magnitude", magnitude_mask(w, 0.5))):
        err[name] = float(((x @ torch.where(m, w, 0.0).t()) ** 2).sum())
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err
    assert bool((new[mask] == 0).all())
    assert mask.sum() == w.numel() // 2


def test_sparsegpt_with_sparsity_zero_leaves_weights_unchanged():
    original = tiny_model("llama")
    model = copy.deepcopy(original)
    lm, masks = run(model, "sparsegpt", [0.0, 0.5, 0.0])
    for tm, orig in zip(lm.modules(), LayerMap(original).modules(), strict=True):
        if tm.layer != 1:
            assert torch.equal(tm.module.weight, orig.module.weight), tm.name
            assert not masks[tm.name].any()
        else:
            assert not torch.equal(tm.module.weight, orig.module.weight)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    x = torch.randn(64, 16, generator=g)
    new, mask = sparsegpt_prune(w, 2 * x.t() @ x / 64, 0.0)
    assert torch.equal(new, w) and not mask.any()


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_patterns_hold_exactly(pruner, pattern):
    n, m = map(int, pattern.split(":"))
    lm, masks = run(tiny_model("llama"), pruner, SPARSITIES, pattern)
    for tm in lm.modules():
        w = tm.weight_matrix(tm.module.weight.data)
        groups = masks[tm.name].reshape(tm.d_out, tm.d_in // m, m)
        assert (groups.sum(-1) == m - n).all(), tm.name
        assert (w[masks[tm.name]] == 0).all()
        nonzero = (w != 0).reshape(tm.d_out, tm.d_in // m, m).sum(-1)
        assert (nonzero <= n).all()


def reference_sparsegpt(w: torch.Tensor, u: torch.Tensor, sparsity: float, nm, blocksize: int):
    """The reference's column loop (IST-DASLab/sparsegpt ``fasterprune``), one column at a time, in
    float64: mask chosen per block (unstructured) or per group of M columns (N:M) by ``w² / U_jj²``."""
    w, u = w.double().clone(), u.double()
    mask = torch.zeros(w.shape, dtype=torch.bool)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        w1, u1, err1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2], torch.zeros(w.shape[0], i2 - i1).double()
        diag = torch.diag(u1)
        mask1 = torch.zeros(w1.shape, dtype=torch.bool)
        if nm is None:
            k = int(w1.numel() * sparsity)
            mask1.view(-1)[torch.topk((w1 ** 2 / diag ** 2).flatten(), k, largest=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                group = w1[:, i:i + nm[1]] ** 2 / diag[i:i + nm[1]] ** 2
                mask1.scatter_(1, i + torch.topk(group, nm[1] - nm[0], dim=1, largest=False).indices, True)
            q = torch.where(mask1[:, i], 0.0, w1[:, i])
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2], mask[:, i1:i2] = w1, mask1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w, mask


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_sparsegpt_batched_solve_equals_the_column_loop(nm):
    from layerif_prune.sparsegpt import dampened_inverse_factor

    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 120, generator=g)
    x = (torch.randn(400, 24, generator=g) @ torch.randn(24, 120, generator=g)
         + 0.3 * torch.randn(400, 120, generator=g))
    u = dampened_inverse_factor(2 * x.t() @ x / len(x), 0.01)
    new, mask = sparsegpt_prune(w, None, 0.6, nm, blocksize=40, factor=u)  # spans of 16, 16, 8
    ref, ref_mask = reference_sparsegpt(w, u, 0.6, nm, blocksize=40)
    assert torch.equal(mask, ref_mask)
    assert float((new.double() - ref).norm() / ref.norm()) < 1e-5
    assert bool((new[mask] == 0).all())
