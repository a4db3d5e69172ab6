"""``lsa``: the per-block statistic of LSA (Yang et al. ICLR 2026, "LSA: Layer-wise Sparsity
Allocation for Large Language Model Pruning Based on Minimal Linear Reconstruction Error";
repository BeiYazi0/LSA, ``BlockWanda.blk_s`` and ``blk_score`` in ``layersp/blk.py``).

For a module ``y = W a`` with input Gram matrix ``H = Σ_t a_t a_tᵀ`` (every non-padding calibration
token, float64), removing the set ``P_r`` of weights from output row r without compensation costs
the linear reconstruction error ``e_r = Σ_{j,k ∈ P_r} W_rj W_rk H_jk``. LSA chooses ``P_r`` greedily:
the input channels are taken in groups of ``block_size``; in each group, ``⌊block_size · fraction⌋``
times, every row removes the weight of smallest marginal cost

    c_rj = W_rj² H_jj + 2 W_rj Σ_{k ∈ P_r} W_rk H_kj

(the cost of the weights removed so far, in this group and the earlier ones, enters through the
cross terms). The module's error is ``Σ_r e_r`` (the sum of the chosen costs) and the block's
statistic is the plain mean of its modules' errors::

    x_l = mean_{modules m of block l} Σ_r e_r(m)

DLP's importance ``1 − x_l / Σ x`` follows (``blk_score``): a block whose weights cost more to
remove is pruned *more*, so ``higher_is_better=False``; ``dlp_sparsity`` is the authors' map. The
source's ``H = (2/n) Σ a aᵀ`` differs by one constant for every block, which the map ignores.
Deliberate difference: in a last group narrower than ``⌊block_size · fraction⌋`` (SmolLM2's 576
inputs leave a group of 64) the source would keep picking removed channels and return ∞; here the
whole group is removed.
"""

from __future__ import annotations

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.estimators.capture import capture
from layerif_core.layers import TrackedModule
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import LSAOptions

GRAM_BYTES = 1 << 28  # Gram matrices held at once; more layers take more forward passes


def reconstruction_error(weight: torch.Tensor, gram: torch.Tensor, fraction: float, block_size: int
                         ) -> float:
    """LSA's greedy reconstruction error ``Σ_r e_r`` of ``weight`` ``[d_out, d_in]`` with input Gram
    matrix ``gram`` ``[d_in, d_in]`` (both used in float64)."""
    w, h = weight.detach().double(), gram.double()
    d_out, d_in = w.shape
    width = block_size or d_in
    score = w.square() * h.diagonal()[None, :]  # [d_out, d_in], marginal cost of each weight
    rows = torch.arange(d_out, device=w.device)
    total = torch.zeros((), dtype=torch.float64, device=w.device)
    for i1 in range(0, d_in, width):
        i2 = min(i1 + width, d_in)
        w1, s1, h1 = w[:, i1:i2], score[:, i1:i2], h[i1:i2, i1:i2]
        removed = torch.zeros_like(w1)
        for _ in range(min(int(width * fraction), i2 - i1)):
            idx = s1.argmin(dim=1)  # [d_out]
            total += s1[rows, idx].sum()
            picked = w1[rows, idx]
            s1 += 2.0 * w1 * picked[:, None] * h1[idx]
            s1[rows, idx] = torch.inf
            removed[rows, idx] = picked
        score[:, i2:] += 2.0 * w[:, i2:] * (removed @ h[i1:i2, i2:])
    return float(total)


def input_grams(ctx: RunContext, modules: list[TrackedModule], split) -> dict[str, torch.Tensor]:
    """``Σ_t a_t a_tᵀ`` over every non-padding token of ``split`` for the input of each module,
    float64; modules reading the same tensor (q/k/v, gate/up) share one product per batch."""
    grams = {tm.name: torch.zeros(tm.d_in, tm.d_in, dtype=torch.float64, device=ctx.device)
             for tm in modules}
    current: dict = {}

    def on_forward(tm: TrackedModule, a: torch.Tensor) -> None:
        # a: [B, T, d_in]; mask: [B, T]
        key = (a.data_ptr(), tuple(a.shape), a.stride())
        if key not in current["seen"]:
            x = (a * current["mask"][..., None].to(a.dtype)).flatten(0, 1).double()  # [B·T, d_in]
            current["seen"][key] = (a, x.T @ x)  # holding a keeps its address from being reused
        grams[tm.name] += current["seen"][key][1]

    batches = split.batches(ctx.batch_size, ctx.pad_id)
    with torch.no_grad(), capture(modules, on_forward=on_forward,
                                  batch_size=lambda: current["mask"].shape[0]):
        for batch in ctx.track(batches, split.num_batches(ctx.batch_size), "LSA inputs"):
            batch = batch.to(ctx.device)
            current.update(mask=batch.attention_mask, seen={})
            ctx.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return grams


def layer_groups(layers: list[list[TrackedModule]], budget: int = GRAM_BYTES) -> list[list[int]]:
    """Consecutive layer indices whose float64 Gram matrices fit ``budget`` bytes (at least one)."""
    groups: list[list[int]] = [[]]
    used = 0
    for idx, layer in enumerate(layers):
        size = sum(8 * tm.d_in ** 2 for tm in layer)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(idx)
        used += size
    return groups


class LSAScorer:
    """LSA's block statistic: the mean greedy reconstruction error of its modules with ``fraction``
    of each input group removed; higher = pruned more."""

    def __init__(self, options: LSAOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        o = self.options
        split = calibration_split(ctx, task, o, default="train")
        layers = ctx.layer_map.layers
        values = [0.0] * len(layers)
        for group in layer_groups(layers):
            grams = input_grams(ctx, [tm for i in group for tm in layers[i]], split)
            for i in group:
                errors = [reconstruction_error(tm.weight_matrix(tm.module.weight), grams.pop(tm.name),
                                               o.fraction, o.block_size)
                          for tm in layers[i]]
                values[i] = sum(errors) / len(errors)
        return LayerScores(torch.tensor(values, dtype=torch.float32), False, "lsa", {
            "fraction": o.fraction, "block_size": o.block_size, "n_calibration": len(split)})
