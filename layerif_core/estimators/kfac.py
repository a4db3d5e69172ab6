"""``kfac``: per-module Kronecker-factored curvature ``G_m ≈ A_m ⊗ S_m`` (Martens & Grosse 2015).

``I[l, i] = Σ_{m ∈ l} ⟨(A_m ⊗ S_m + λ_m I)^{-1} q_m, g_{i,m}⟩`` with the inverse applied in the
eigenbasis: ``V = Q_S [(Q_Sᵀ q Q_A) / (Λ_S Λ_Aᵀ + λ)] Q_Aᵀ``. Default ``λ_m = 0.1 · mean(Λ_S Λ_Aᵀ)``.
Passes: one covariance pass over train (cached), one query pass, one score pass.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit
from layerif_core.estimators.damping import CurvatureOptions, check_rules, module_damping
from layerif_core.estimators.factors import eigen_factors, precondition_eigenbasis
from layerif_core.estimators.kronecker import query_gradient, score_pass
from layerif_core.hookspecs import hookimpl


class KFACOptions(CurvatureOptions):
    """Options of ``kfac`` (Fisher and damping)."""


class KFAC:
    """K-FAC influence: Kronecker factors fitted once, inverse applied once per module."""

    def __init__(self, options: CurvatureOptions | None = None):
        self.options = options or KFACOptions()

    def eigenvalues(self, ctx: RunContext, train: TokenizedSplit,
                    eigen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``Λ_S Λ_Aᵀ`` per module (``[d_out, d_in']``)."""
        return {tm.name: torch.outer(eigen[f"{tm.name}.LS"], eigen[f"{tm.name}.LA"])
                for tm in ctx.layer_map.modules()}

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        check_rules(self.options, ctx.layer_map.modules())
        self._eigen = eigen_factors(ctx, train, self.options)
        self._lambda = self.eigenvalues(ctx, train, self._eigen)
        self._fitted = (id(ctx), train.fingerprint)

    def preconditioned(self, ctx: RunContext, query: TokenizedSplit) -> dict[str, torch.Tensor]:
        """``V_m = (G_m + λ_m I)^{-1} q_m`` for every tracked module."""
        q = query_gradient(ctx, query)
        out, dampings = {}, {}
        for tm in ctx.layer_map.modules():
            lam = self._lambda[tm.name]
            damp = module_damping(self.options, tm, float(lam.double().mean()))
            dampings[tm.name] = damp
            out[tm.name] = precondition_eigenbasis(q[tm.name], self._eigen[f"{tm.name}.QA"],
                                                   self._eigen[f"{tm.name}.QS"], lam, damp)
        self.dampings = dampings
        return out

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        if getattr(self, "_fitted", None) != (id(ctx), train.fingerprint):
            self.fit(ctx, train)
        return score_pass(ctx, train, self.preconditioned(ctx, query))


@hookimpl
def layerif_register_estimators(registry) -> None:
    registry.add("estimator", "kfac", KFAC, config=KFACOptions,
                 help="K-FAC: per-module A ⊗ S curvature, inverse in the Kronecker eigenbasis.")
