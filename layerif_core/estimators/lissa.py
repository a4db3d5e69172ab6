"""``lissa``: the inverse-curvature product by the LiSSA recursion (Agarwal et al. 2017; Koh &
Liang 2017), restricted to each layer.

Per layer l, ``v_0 = q``, ``v_j = q + (I − (G_B + D)/s) v_{j−1}`` with ``G_B v = (1/|B|) Σ_{i ∈ B}
g_i (g_iᵀ v)`` the curvature-vector product of a random mini-batch B (the Fisher of the chosen labels;
for the cross-entropy with sampled labels, the Gauss–Newton matrix in expectation). For
``s > λ_max(G + D)`` it converges to ``s (G + D)^{-1} q``, so ``V = v / s``; repeats are averaged.
``G_B v`` needs no per-example gradient: ``g_iᵀ v = Σ_m Σ_t δ_tᵀ V_m ã_t`` and ``Σ_i c_i g_i = Σ_t
(c_i δ_t) ã_tᵀ`` from one forward-backward of the mini-batch, for every layer at once.

The default damping is ``0.1 · trace(G_m)/P_m`` (a pass of per-example gradient norms); the default
scale is ``2 (λ̂_max + max λ)`` with ``λ̂_max`` from power iteration. The manifest records the
relative change ``‖v_j − v_{j−1}‖/‖v_j‖`` of the last iterations; a diverging iteration stops with an
error instead of writing scores.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_
from layerif_core.errors import NumericalError
from layerif_core.estimators.damping import (
    absolute_damping,
    check_rules,
    module_damping,
)
from layerif_core.estimators.factors import augment, example_sq_norms
from layerif_core.estimators.kronecker import query_gradient, run_pass, score_pass
from layerif_core.estimators.options import LissaOptions
from layerif_core.layers import TrackedModule

log = logging.getLogger("layerif")
Vec = dict[str, torch.Tensor]


@contextlib.contextmanager
def _quiet(ctx: RunContext):
    """No progress bar per mini-batch pass (the outer loop has one)."""
    shown = ctx.show_progress
    ctx.show_progress = False
    try:
        yield
    finally:
        ctx.show_progress = shown


def curvature_products(ctx: RunContext, split: TokenizedSplit, v: Vec, sample_seed: int | None) -> Vec:
    """``G v`` per layer over ``split``: ``(1/N) Σ_i g_i^l (g_i^lᵀ v^l)``, per module ``[d_out, d_in']``."""
    layers = ctx.layer_map.layers
    out = {k: torch.zeros_like(t) for k, t in v.items()}
    stash: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    count = torch.zeros(1, dtype=torch.float64, device=ctx.device)

    def flush() -> None:
        if not stash:
            return
        for layer in layers:
            # s: [B] = g_bᵀ v for the layer; then Σ_b s_b g_b per module
            s = sum(torch.einsum("bto,bto->b", d, a @ v[tm.name].T)
                    for tm in layer for a, d in [stash[tm.name]])
            for tm in layer:
                a, d = stash[tm.name]
                out[tm.name] += torch.einsum("bto,bti->oi", d * s[:, None, None], a)
        stash.clear()

    def on_batch(batch: Batch) -> None:
        flush()
        count[0] += batch.input_ids.shape[0]

    def keep(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        stash[tm.name] = (augment(tm, a), delta)

    run_pass(ctx, split, "curvature-vector product", on_backward=keep, on_batch=on_batch,
             sample_seed=sample_seed)
    flush()
    all_reduce_(count)
    n = max(float(count[0]), 1.0)
    return {k: all_reduce_(t) / n for k, t in out.items()}


def mean_eigenvalues(ctx: RunContext, train: TokenizedSplit, sample_seed: int | None) -> dict[str, float]:
    """``trace(G_m)/P_m = E_i ‖g_{i,m}‖² / P_m`` per module, from one pass of gradient norms."""
    modules = ctx.layer_map.modules()
    sq = torch.zeros(len(modules), dtype=torch.float64, device=ctx.device)
    col = {tm.name: j for j, tm in enumerate(modules)}
    count = torch.zeros(1, dtype=torch.float64, device=ctx.device)

    def on_batch(batch: Batch) -> None:
        count[0] += batch.input_ids.shape[0]

    def norms(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        sq[col[tm.name]] += example_sq_norms(augment(tm, a), delta).sum().double()

    run_pass(ctx, train, f"gradient norms ({train.name})", on_backward=norms, on_batch=on_batch,
             sample_seed=sample_seed)
    all_reduce_(sq)
    all_reduce_(count)
    n = max(float(count[0]), 1.0)
    return {tm.name: float(sq[col[tm.name]]) / n / (tm.d_out * (tm.d_in + int(tm.has_bias)))
            for tm in modules}


def _layer_norms(ctx: RunContext, v: Vec) -> torch.Tensor:
    return torch.stack([torch.sqrt(sum(v[tm.name].double().square().sum() for tm in layer))
                        for layer in ctx.layer_map.layers])


class MiniBatches:
    """Seeded random mini-batches of ``train``, cycling through fresh permutations."""

    def __init__(self, train: TokenizedSplit, size: int, seed: int):
        self.train, self.size = train, min(size, len(train))
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> TokenizedSplit:
        if self.size == len(self.train):
            return self.train
        if len(self.order) < self.size:
            self.order = torch.randperm(len(self.train), generator=self.gen).tolist()
        picked, self.order = self.order[: self.size], self.order[self.size:]
        return self.train.subset(sorted(picked))


class Lissa:
    """LiSSA influence, layer-restricted curvature-vector products."""

    def __init__(self, options: LissaOptions | None = None):
        self.options = options or LissaOptions()

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """The per-module damping (from gradient norms unless given as numbers)."""
        opts = self.options
        modules = ctx.layer_map.modules()
        check_rules(opts, modules)
        relative = any(absolute_damping(opts, tm) is None for tm in modules)
        means = mean_eigenvalues(ctx, train, opts.sample_seed(ctx.seed)) if relative else {}
        self.dampings = {tm.name: module_damping(opts, tm, means.get(tm.name, 0.0)) for tm in modules}
        self._fitted = (id(ctx), train.fingerprint)

    def _apply(self, ctx: RunContext, batches: MiniBatches, v: Vec) -> Vec:
        """``(G_B + D) v`` on the next mini-batch."""
        gv = curvature_products(ctx, batches.next(), v, self.options.sample_seed(ctx.seed))
        return {k: gv[k] + self.dampings[k] * v[k] for k in v}

    def scales(self, ctx: RunContext, batches: MiniBatches, like: Vec) -> list[float]:
        """``s_l``: the option, or 2 × the largest Rayleigh quotient seen in power iteration."""
        n_layers = len(ctx.layer_map)
        if self.options.scale is not None:
            return [float(self.options.scale)] * n_layers
        gen = torch.Generator().manual_seed(ctx.seed + 1)
        v = {k: torch.randn(t.shape, generator=gen).to(t) for k, t in like.items()}
        top = torch.zeros(n_layers, dtype=torch.float64)
        for _ in ctx.track(range(self.options.power_iterations), self.options.power_iterations,
                           "LiSSA scale (power iteration)"):
            norm = _layer_norms(ctx, v).cpu()
            v = {tm.name: v[tm.name] / max(float(norm[tm.layer]), 1e-30) for tm in ctx.layer_map.modules()}
            with _quiet(ctx):
                hv = self._apply(ctx, batches, v)
            rayleigh = torch.stack([sum((hv[tm.name].double() * v[tm.name].double()).sum() for tm in layer)
                                    for layer in ctx.layer_map.layers]).cpu()
            top = torch.maximum(top, rayleigh)
            v = hv
        return [2.0 * max(float(t), 1e-30) for t in top]

    def solve(self, ctx: RunContext, train: TokenizedSplit, q: Vec) -> Vec:
        """``V ≈ (G + D)^{-1} q`` per layer; records the convergence report in the manifest."""
        opts = self.options
        layers = ctx.layer_map.layers
        batches = MiniBatches(train, opts.batch_size or ctx.batch_size, ctx.seed)
        scales = self.scales(ctx, batches, q)
        q_norm = _layer_norms(ctx, q).cpu()
        lam_min = [min(self.dampings[tm.name] for tm in layer) for layer in layers]
        bound = [10.0 * scales[l] * float(q_norm[l]) / lam_min[l] + 1e-30 for l in range(len(layers))]
        total: Vec = {k: torch.zeros_like(t) for k, t in q.items()}
        history: list[list[float]] = []
        steps = [(r, j) for r in range(opts.repeats) for j in range(opts.depth)]
        layer_of = {tm.name: tm.layer for tm in ctx.layer_map.modules()}
        v = dict(q)
        for _r, j in ctx.track(steps, len(steps), "LiSSA"):
            if j == 0:
                v, history = {k: t.clone() for k, t in q.items()}, []
            with _quiet(ctx):
                hv = self._apply(ctx, batches, v)
            new = {tm.name: q[tm.name] + v[tm.name] - hv[tm.name] / scales[tm.layer]
                   for tm in ctx.layer_map.modules()}
            norms = _layer_norms(ctx, new).cpu()
            change = _layer_norms(ctx, {k: new[k] - v[k] for k in v}).cpu() / norms.clamp(min=1e-30)
            self._check(norms, bound, scales, j)
            v = new
            if j >= opts.depth - opts.report_last:
                history.append([float(c) for c in change])
            if j == opts.depth - 1:
                for k in total:
                    total[k] += v[k] / scales[layer_of[k]]
        self._report(ctx, scales, history)
        return {k: t / opts.repeats for k, t in total.items()}

    def _check(self, norms: torch.Tensor, bound: list[float], scales: list[float], step: int) -> None:
        for l, n in enumerate(norms.tolist()):
            if not (n == n and n < bound[l]):  # NaN or past the largest possible fixed point
                log.warning("LiSSA diverged in layer %d after %d iterations", l, step + 1)
                raise NumericalError(
                    f"LiSSA diverged in layer {l} after {step + 1} iterations (‖v‖ = {n:.3g}): scale "
                    f"{scales[l]:.3g} is below the largest eigenvalue of G + λ; raise options.scale "
                    "(or leave it unset to estimate it). No scores were written.")

    def _report(self, ctx: RunContext, scales: list[float], history: list[list[float]]) -> None:
        per_layer = [[row[l] for row in history] for l in range(len(scales))]
        final = [p[-1] if p else float("nan") for p in per_layer]
        converged = all(f <= self.options.tolerance for f in final)
        if not converged:
            log.warning("LiSSA: last relative change %s above tolerance %g; raise depth or damping",
                        ", ".join(f"{f:.2g}" for f in final), self.options.tolerance)
        ctx.run_dir.update_manifest(lissa={
            "depth": self.options.depth, "repeats": self.options.repeats, "scales": scales,
            "dampings": self.dampings, "last_relative_change": per_layer, "converged": converged})

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        if getattr(self, "_fitted", None) != (id(ctx), train.fingerprint):
            self.fit(ctx, train)
        q = query_gradient(ctx, query)
        return score_pass(ctx, train, self.solve(ctx, train, q))
