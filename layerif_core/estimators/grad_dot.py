"""``grad_dot``: the plain gradient inner product, ``I[l, i] = (q^l)ᵀ g_i^l`` (G = 0, λ = 1).

The cheapest estimator (one query pass and one score pass), and the baseline curvature-free
influence of TracIn-style methods (Pruthi et al. 2020) restricted to one checkpoint.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit
from layerif_core.estimators.kronecker import query_gradient, score_pass


class GradDot:
    """Inner product of the summed query gradient with each training gradient, per layer."""

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """No curvature to fit."""

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        q = query_gradient(ctx, query)
        return score_pass(ctx, train, q)
