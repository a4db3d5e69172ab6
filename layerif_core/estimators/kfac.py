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
from layerif_core.estimators.factors import (
    FactorView,
    fit_eigen,
    make_plan,
    module_groups,
    open_store,
    precondition_eigenbasis,
)
from layerif_core.estimators.kronecker import query_gradient, score_pass
from layerif_core.estimators.memory import Group, influence_bytes, influence_reserve
from layerif_core.estimators.options import KFACOptions
from layerif_core.layers import TrackedModule


class KFAC:
    """K-FAC influence: Kronecker factors fitted once, inverse applied once per module.

    Factors stream through a :class:`~layerif_core.estimators.store.FactorStore` (one file per
    shared-input group); the query and score passes run once per module partition of the memory
    budget, each partition's ``V = (G + λI)^{-1} q`` built from its groups' factors alone."""

    stages: tuple[str, ...] = ("eigen",)

    def __init__(self, options: CurvatureOptions | None = None):
        self.options = options or KFACOptions()

    def module_eigenvalues(self, tm: TrackedModule, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Λ_S Λ_Aᵀ`` of one module (``[d_out, d_in']``) from its group's factors."""
        return torch.outer(factors[f"{tm.name}.LS"], factors["LA"])

    def fit_stages(self, ctx: RunContext, train: TokenizedSplit) -> None:
        fit_eigen(ctx, train, self.options, self.store, self.groups)

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        check_rules(self.options, ctx.layer_map.modules())
        self.store = open_store(ctx, train, self.options)
        self.groups = module_groups(ctx, train)
        self.fit_stages(ctx, train)
        self._fitted = (id(ctx), train.fingerprint)

    @property
    def _eigen(self) -> FactorView:
        return FactorView(self.store, "eigen", self.groups, torch.device("cpu"))

    @property
    def _lambda(self) -> dict[str, torch.Tensor]:
        """Each module's curvature eigenvalues (``[d_out, d_in']``), for inspection and tests."""
        return {tm.name: self.module_eigenvalues(tm, self.group_factors(g, torch.device("cpu")))
                for g in self.groups for tm in g.modules}

    def group_factors(self, g: Group, device: torch.device) -> dict[str, torch.Tensor]:
        """Every stage's tensors of one group, on ``device``."""
        out: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            out.update(self.store.get(stage, g, device))
        return out

    def precondition_group(self, ctx: RunContext, g: Group, q: dict[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
        """``V_m = (G_m + λ_m I)^{-1} q_m`` for the modules of one group (their ``q`` consumed)."""
        f = self.group_factors(g, ctx.device)
        out = {}
        for tm in g.modules:
            lam = self.module_eigenvalues(tm, f)
            damp = module_damping(self.options, tm, float(lam.double().mean()))
            self.dampings[tm.name] = damp
            out[tm.name] = precondition_eigenbasis(q.pop(tm.name), f["QA"], f[f"{tm.name}.QS"],
                                                   lam, damp)
        return out

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        if getattr(self, "_fitted", None) != (id(ctx), train.fingerprint):
            self.fit(ctx, train)
        self.dampings: dict[str, float] = {}
        plan = make_plan(ctx, self.options, "query and score passes", self.groups, influence_bytes,
                         influence_reserve(self.groups))
        self.plan = plan
        scores = torch.zeros(len(ctx.layer_map), len(train), device=ctx.device)
        for p in range(plan.P):
            modules = plan.modules(p)
            q = query_gradient(ctx, query, modules=modules, dtype=None)
            v = {}
            for g in plan.partitions[p]:
                v.update(self.precondition_group(ctx, g, q))
            scores += score_pass(ctx, train, v, modules=modules, dtype=None)
            del v
        if plan.P > 1:
            ctx.run_dir.manifest.setdefault("influence_plans", {})[train.name] = plan.to_json()
        return scores
