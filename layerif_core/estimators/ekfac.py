"""``ekfac``: K-FAC's eigenbases with eigenvalues refitted per example (George et al. 2018;
Grosse et al. 2023), the default estimator.

``Λ*[j, k] = E_i[(Q_Sᵀ g_i Q_A)[j, k]²]`` replaces ``Λ_S Λ_Aᵀ``; this is the best diagonal
approximation of the per-example Fisher in the Kronecker eigenbasis. Default ``λ_m = 0.1 ·
mean(Λ*_m)``. Passes: covariance and eigenvalue-correction passes over train (both cached under
``factors/``), one query pass, one score pass; the per-example gradient is never formed in the score
pass.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit
from layerif_core.estimators.factors import corrected_eigenvalues
from layerif_core.estimators.kfac import KFAC, KFACOptions
from layerif_core.hookspecs import hookimpl


class EKFACOptions(KFACOptions):
    """Options of ``ekfac`` (Fisher and damping)."""


class EKFAC(KFAC):
    """EK-FAC influence: K-FAC eigenbases, per-example eigenvalues."""

    def __init__(self, options: EKFACOptions | None = None):
        super().__init__(options or EKFACOptions())

    def eigenvalues(self, ctx: RunContext, train: TokenizedSplit,
                    eigen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lam = corrected_eigenvalues(ctx, train, self.options, eigen)
        return {tm.name: lam[f"{tm.name}.Lambda"] for tm in ctx.layer_map.modules()}


@hookimpl
def layerif_register_estimators(registry) -> None:
    registry.add("estimator", "ekfac", EKFAC, config=EKFACOptions,
                 help="EK-FAC (default): K-FAC eigenbases with per-example refitted eigenvalues.")
