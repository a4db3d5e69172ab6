"""``alp``: the per-block statistic of ALP (Adaptive Layerwise Pruning; repository ironartisan/ALP:
``save_gradient.py`` and ``lib/layer.py`` collect the gradients, ``get_per_layer_ratio`` in
``lib/prune_all.py`` reduces them).

Each calibration example n (one per backward pass) gives the gradient ``g_n`` of its loss with
respect to every tracked weight matrix; ALP's C4 loader masks every label but the last, so the loss
is the cross-entropy of the example's last token (``tokens: last``). Per weight the sensitivity is::

    M = Σ_n g_n² + 100² · g_N²        (accumulate: source — the saved ``conn_l2_hundred`` is rebuilt
                                       from the running sum and the *last* example's gradient)
    M = Σ_n g_n²                       (accumulate: sum)

For block l, with ``μ_l``, ``σ_l`` the mean and (unbiased) standard deviation of M over all the
block's weights, the statistic is the sum of absolute z-scores::

    x_l = Σ_{ij ∈ block l} |M_ij − μ_l| / σ_l

It does not depend on the scale of M (only on the shape of its distribution). ALP's importance is
``1 − x_l / Σ x``, then OWL's map (``dlp_sparsity``): a block with a larger ``x_l`` gets *more*
sparsity, so ``higher_is_better=False``. The model stays in eval mode (ALP calls ``model.train()``;
the same for models without dropout).
"""

from __future__ import annotations

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.data import IGNORE, Batch
from layerif_core.losses import check_finite, sequence_losses
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import ALPOptions


def abs_zscore_sum(values: list[torch.Tensor]) -> float:
    """``Σ |M − mean(M)| / std(M)`` over all entries of ``values`` together (std unbiased)."""
    m = torch.cat([v.flatten().double() for v in values])
    return float((m - m.mean()).abs().sum() / m.std())


def last_token_labels(batch: Batch) -> torch.Tensor:
    """Labels ``[B, T]`` that keep only each sequence's last (non-padding) token in the loss."""
    labels = torch.full_like(batch.input_ids, IGNORE)
    last = batch.attention_mask.sum(dim=1) - 1  # [B]
    rows = torch.arange(len(last), device=last.device)
    labels[rows, last] = batch.input_ids[rows, last]
    return labels


class ALPScorer:
    """ALP's Σ|z-score| of squared per-example gradients per block; higher = pruned more."""

    def __init__(self, options: ALPOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        o = self.options
        split = calibration_split(ctx, task, o, default="train")
        layers = ctx.layer_map.layers
        weights = {tm.name: tm.module.weight for layer in layers for tm in layer}
        tracked = {id(p) for p in weights.values()}
        flags = [(p, p.requires_grad, p.grad) for p in ctx.model.parameters()]
        sumsq = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
        try:
            for p, _, _ in flags:
                p.requires_grad_(id(p) in tracked)
            for batch in ctx.track(split.batches(1, ctx.pad_id), len(split), "ALP gradients"):
                batch = batch.to(ctx.device)
                for p in weights.values():
                    p.grad = None
                labels = last_token_labels(batch) if o.tokens == "last" else None
                loss = sequence_losses(ctx.model, batch, labels=labels, reduction="mean")
                check_finite(loss, batch, split.name)
                loss.sum().backward()
                for name, p in weights.items():
                    sumsq[name] += p.grad.float().square()
            values = []
            for layer in layers:
                per_module = []
                for tm in layer:
                    m = sumsq.pop(tm.name)
                    if o.accumulate == "source":
                        m = m + 1e4 * weights[tm.name].grad.float().square()
                    per_module.append(m)
                values.append(abs_zscore_sum(per_module))
        finally:
            for p, flag, grad in flags:
                p.grad = grad
                p.requires_grad_(flag)
        return LayerScores(torch.tensor(values, dtype=torch.float32), False, "alp", {
            "accumulate": o.accumulate, "tokens": o.tokens, "n_calibration": len(split)})
