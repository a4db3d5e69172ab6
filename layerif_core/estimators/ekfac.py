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
from layerif_core.estimators.factors import fit_eigen, fit_lambda
from layerif_core.estimators.kfac import KFAC
from layerif_core.estimators.options import EKFACOptions
from layerif_core.layers import TrackedModule


class EKFAC(KFAC):
    """EK-FAC influence: K-FAC eigenbases, per-example eigenvalues."""

    stages = ("eigen", "lambda")

    def __init__(self, options: EKFACOptions | None = None):
        super().__init__(options or EKFACOptions())

    def module_eigenvalues(self, tm: TrackedModule, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        return factors[f"{tm.name}.Lambda"]

    def fit_stages(self, ctx: RunContext, train: TokenizedSplit) -> None:
        fit_eigen(ctx, train, self.options, self.store, self.groups)
        fit_lambda(ctx, train, self.options, self.store, self.groups)
