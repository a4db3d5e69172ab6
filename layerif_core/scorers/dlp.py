"""``dlp``: the per-block statistic of DLP (Chen et al. ICML 2025, "DLP: Dynamic Layerwise Pruning in
Large Language Models", arXiv 2505.23807; repository ironartisan/DLP, ``get_dlp_ratios`` and
``get_dlp_structure_ratios`` in ``lib/prune.py``).

Each weight gets Wanda's score ``A_ij = |W_ij| · ‖X_j‖₂`` (``X_j``: input feature j of its module over
every non-padding calibration token, as OWL collects it: :func:`~layerif_core.scorers.owl.
input_feature_norms`). For decoder block l the scores of all its tracked modules are flattened
together and reduced to one number::

    x_l = median_{ij ∈ block l} A_ij        (statistic: median; DLP's paper and its --strategy default)
    x_l = mean_{ij ∈ block l} A_ij          (statistic: mean; what the released get_dlp_ratios computes)

The median is ``torch.median`` (the lower of the two middle values), as in the source. Wanda's
``1/nsamples`` scaling of ``‖X‖`` multiplies every block by the same constant and does not change
the allocation. DLP's importance is ``1 − x_l / Σ x``: a *larger* statistic is *less* important and
gets *more* sparsity, so ``higher_is_better=False``; ``dlp_sparsity`` is the authors' map.
"""

from __future__ import annotations

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import DLPOptions
from layerif_core.scorers.owl import input_feature_norms


def block_statistic(weights: list[torch.Tensor], feature_norms: list[torch.Tensor], statistic: str
                    ) -> float:
    """The median (or mean) of ``|W_ij|·‖X_j‖₂`` over all weights of a block.

    ``weights[k]`` is ``[d_out, d_in]`` and ``feature_norms[k]`` is ``‖X_j‖₂`` ``[d_in]`` of module k.
    """
    scores = torch.cat([(w.detach().float().abs() * n.to(w.device, torch.float32)[None, :]).flatten()
                        for w, n in zip(weights, feature_norms, strict=True)])
    if statistic == "median":
        return float(torch.median(scores))
    return float(scores.double().mean())


class DLPScorer:
    """DLP's block statistic of Wanda scores; higher = less important, so pruned more."""

    def __init__(self, options: DLPOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        split = calibration_split(ctx, task, self.options, default="train")
        norms = input_feature_norms(ctx, ctx.layer_map.modules(), split)
        values = [
            block_statistic([tm.weight_matrix(tm.module.weight) for tm in layer],
                            [norms[tm.name] for tm in layer], self.options.statistic)
            for layer in ctx.layer_map.layers
        ]
        return LayerScores(torch.tensor(values, dtype=torch.float32), False, "dlp", {
            "statistic": self.options.statistic, "n_calibration": len(split)})
