"""``owl_outlier``: the layer-wise outlier ratio of OWL (Yin et al. 2023, "Outlier Weighed Layerwise
Sparsity", repository luuyin/OWL, ``prune_wanda_outlier`` and ``check_outlier_mean``).

Each weight gets Wanda's score ``A_ij = |W_ij| · ‖X_j‖₂``, where ``X_j`` is input feature j of its
module over every (non-padding) calibration token. For decoder block l the scores of *all* its
tracked modules are flattened together and the block's outlier ratio, in percent, is::

    D_l = 100 · #{A_ij > M · mean(A)} / #{A}                          (M = 5, OWL's Hyper_m)

with the mean taken over the whole block, as in the source (not per module). Because ``‖X_j‖₂`` is
scaled by the same constant for every feature of a block, Wanda's ``1/nsamples`` normalisation of
``scaler_row`` does not change ``D_l``. The source feeds each block the dense model's outputs of the
previous block, so one forward pass of the unpruned model with hooks gives the same activations.

Direction: OWL gives blocks with *more* outliers a *lower* sparsity (architecture §5). Allocators give the
*worse* layer more sparsity, so a high outlier ratio marks a *better* (more important) layer:
``higher_is_better=True``.
"""

from __future__ import annotations

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.estimators.capture import capture
from layerif_core.layers import TrackedModule
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import OWLOptions


def outlier_ratio(weights: list[torch.Tensor], feature_norms: list[torch.Tensor], threshold: float
                  ) -> float:
    """OWL's ratio (percent) of scores ``|W_ij|·‖X_j‖₂`` above ``threshold`` × their common mean.

    ``weights[k]`` is ``[d_out, d_in]`` and ``feature_norms[k]`` is ``‖X_j‖₂`` ``[d_in]`` of module k.
    """
    pairs = list(zip(weights, feature_norms, strict=True))

    def scores(w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:  # one module at a time
        return w.detach().float().abs() * n.to(w.device, torch.float32)[None, :]

    total = sum(float(scores(w, n).sum(dtype=torch.float64)) for w, n in pairs)
    count = sum(w.numel() for w, _ in pairs)
    cut = threshold * total / count
    outliers = sum(int((scores(w, n) > cut).sum()) for w, n in pairs)
    return outliers * 100.0 / count


def input_feature_norms(ctx: RunContext, modules: list[TrackedModule], split) -> dict[str, torch.Tensor]:
    """``‖X_j‖₂`` over every non-padding token of ``split`` for the input of each module, float64."""
    sumsq = {tm.name: torch.zeros(tm.d_in, dtype=torch.float64, device=ctx.device) for tm in modules}
    current: dict[str, torch.Tensor] = {}

    def on_forward(tm: TrackedModule, a: torch.Tensor) -> None:
        # a: [B, T, d_in]; mask: [B, T]
        mask = current["mask"].to(a.dtype)
        sumsq[tm.name] += torch.einsum("btd,bt->d", a.square(), mask).double()

    batches = split.batches(ctx.batch_size, ctx.pad_id)
    with torch.no_grad(), capture(modules, on_forward=on_forward,
                                  batch_size=lambda: current["mask"].shape[0]):
        for batch in ctx.track(batches, split.num_batches(ctx.batch_size), "OWL activations"):
            batch = batch.to(ctx.device)
            current["mask"] = batch.attention_mask
            ctx.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return {name: s.sqrt() for name, s in sumsq.items()}


class OWLScorer:
    """OWL's layer-wise outlier ratio (percent of Wanda scores above M × the block mean); higher =
    more important, so pruned less."""

    def __init__(self, options: OWLOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        split = calibration_split(ctx, task, self.options, default="train")
        norms = input_feature_norms(ctx, ctx.layer_map.modules(), split)
        ratios = [
            outlier_ratio([tm.weight_matrix(tm.module.weight) for tm in layer],
                          [norms[tm.name] for tm in layer], self.options.threshold)
            for layer in ctx.layer_map.layers
        ]
        return LayerScores(torch.tensor(ratios, dtype=torch.float32), True, "owl_outlier", {
            "threshold": self.options.threshold, "n_calibration": len(split), "unit": "percent",
        })
