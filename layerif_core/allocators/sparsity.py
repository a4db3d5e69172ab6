"""Sparsity allocators (architecture §5): layer scores to a target sparsity per decoder layer.

Convention: the layer judged *worse trained* (``LayerScores.worseness()``) gets *more* sparsity.

- ``alpha_pruning`` (AlphaPruning, Lu et al. 2024, ``ww_sparsity`` in haiquanlu/AlphaPruning
  ``lib/prune.py``; the form LayerIF uses for pruning): with ``w_l`` the worse-ness min-maxed to
  ``[0, 1]``, the raw ratio ``r_l = (1 − ε) + 2ε · w_l`` lies in ``[1 − ε, 1 + ε]`` and the sparsity is
  ``s_l = η · r_l`` with ``η = s · Σ_l p_l / Σ_l p_l r_l`` (``p_l`` = prunable parameters of layer l),
  so the parameter-weighted mean sparsity is exactly ``s``. Layers above ``max_sparsity`` (or below
  0 when ``ε > 1``) are clipped and ``η`` is re-solved on the others (water-filling), which keeps the
  mean exact; the clipped layers are reported. ``overflow: clip`` only clips them, as
  ``ww_sparsity`` does (its mean then falls below ``s``). ``absolute=true`` reads ε as an absolute half-width
  ``δ`` (range ``[s − δ, s + δ]``), i.e. ``ε = δ / s``.
- ``owl_sparsity`` (OWL, Yin et al. 2024, ``prune_wanda_outlier`` in luuyin/OWL ``lib/prune_all.py``):
  the worse-ness min-maxed to ``[0, 2λ]`` gives ``s_l = s − mean(d) + d_l`` (unweighted mean over
  layers, as OWL computes it): the sparsities span a range of width ``2λ`` whose mean is ``s``.
  OWL writes it for outlier ratios (more outliers = pruned less); with the worse-ness of the
  outlier ratio it is the same formula.
- ``dlp_sparsity`` (DLP, Chen et al. ICML 2025, ``get_dlp_ratios`` in ironartisan/DLP ``lib/prune.py``;
  the same map in LSA, BeiYazi0/LSA ``layersp/blk.py``, and ALP, ironartisan/ALP ``lib/prune_all.py``):
  the authors turn a per-block statistic ``x_l ≥ 0`` into an importance ``1 − x_l / Σ x``, min-max it
  to ``[0, 2α]`` and keep ``1 − s − mean + imp_l`` of the weights. Since ``minmax(1 − x/Σx) =
  1 − minmax(x)``, the sparsity is ``s_l = s + e_l − mean(e)`` with ``e = 2α · minmax(x)``: a larger
  statistic (here: the worse-ness) gets more sparsity. The mean is parameter-weighted (the authors'
  plain mean when all blocks are equal, exact otherwise). α defaults to the authors' value for the
  target sparsity (:data:`AUTHORS_ALPHA`).
- ``atp_sparsity`` (ATP, Huang et al. ICML 2025, wzhuang-xmu/ATP ``main.py``): an arithmetic
  progression over depth, ``s_l = S + β (l − l̄)`` with ``l̄`` the parameter-weighted mean layer index
  (``(L − 1)/2`` for equal blocks: the authors' ``S − β(L−1)/2 + β l``). The scores are not read.
  β must keep every layer in ``[0, 1]`` (:func:`max_beta`); :func:`beta_grid` is the authors' search
  grid ``0.002, 0.004, …``.
- ``uniform_sparsity``: ``s_l = s`` for every layer (the control of every study).

Equal scores get equal sparsity; when all scores are equal every allocator is uniform.
"""

from __future__ import annotations

import logging

import torch

from layerif_core.allocators.options import (
    AlphaPruningOptions,
    ATPSparsityOptions,
    DLPSparsityOptions,
    OWLSparsityOptions,
    UniformSparsityOptions,
)
from layerif_core.errors import BudgetError, ConfigError
from layerif_core.results import Allocation, LayerScores

log = logging.getLogger("layerif")


def minmax(x: torch.Tensor) -> torch.Tensor:
    """``x`` mapped linearly onto ``[0, 1]``; all zeros when every entry is equal."""
    span = x.max() - x.min()
    if span <= 0:
        return torch.zeros_like(x)
    return (x - x.min()) / span


def _weights(weights: list[float] | None, n: int, use: bool) -> torch.Tensor:
    if weights is None or not use:
        return torch.ones(n, dtype=torch.float64)
    if len(weights) != n:
        raise ConfigError(f"allocator got {len(weights)} layer weights for {n} layer scores; the "
                          "scores do not belong to this model.")
    w = torch.tensor(weights, dtype=torch.float64)
    if (w <= 0).any():
        raise ConfigError("allocator layer weights must be positive (prunable parameters per layer).")
    return w


def scale_to_mean(ratios: torch.Tensor, weights: torch.Tensor, target: float, cap: float
                  ) -> tuple[torch.Tensor, list[int]]:
    """``clip(η · ratios, 0, cap)`` with η solved so that the ``weights``-weighted mean is ``target``.

    ``Σ_l p_l clip(η r_l, 0, cap)`` is non-decreasing in η, so water-filling finds it exactly:
    solve η on the free layers, pin those that exceed ``cap`` to ``cap``, repeat. Layers with
    ``r_l ≤ 0`` stay at 0. Returns the sparsities and the indices of the clipped layers.
    """
    # ratios, weights: [L] float64
    total = target * float(weights.sum())
    if target == 0:
        return torch.zeros_like(ratios), []
    positive = ratios > 0
    if float(weights[positive].sum()) * cap < total - 1e-12:
        raise BudgetError(f"target sparsity {target} cannot be reached with layers clipped to "
                          f"{cap}; lower the sparsity or epsilon, or raise max_sparsity.")
    pinned = torch.zeros_like(positive)
    while True:
        free = positive & ~pinned
        eta = (total - cap * float(weights[pinned].sum())) / float((weights[free] * ratios[free]).sum())
        out = torch.where(pinned, torch.full_like(ratios, cap), (eta * ratios).clamp(min=0.0))
        over = free & (out > cap)
        if not over.any():
            break
        pinned |= over
    clipped = sorted(set(torch.nonzero(pinned | ~positive).flatten().tolist()))
    return out, clipped


def clip_once(ratios: torch.Tensor, weights: torch.Tensor, target: float, cap: float
              ) -> tuple[torch.Tensor, list[int]]:
    """``clip(η · ratios, 0, cap)`` with ``η = target · Σ p / Σ p r`` solved once, before clipping
    (AlphaPruning's ``ww_sparsity``). Returns the sparsities and the indices of the clipped layers."""
    # ratios, weights: [L] float64
    eta = target * float(weights.sum()) / float((weights * ratios).sum())
    raw = eta * ratios
    out = raw.clamp(min=0.0, max=cap)
    return out, torch.nonzero(out != raw).flatten().tolist()


class UniformSparsity:
    """The same sparsity for every layer (the control)."""

    def __init__(self, opts: UniformSparsityOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        n = len(scores.values)
        return Allocation("sparsity", [float(self.opts.sparsity)] * n, "uniform_sparsity",
                          {"target": self.opts.sparsity})


class AlphaPruningSparsity:
    """AlphaPruning's linear map of layer scores onto ``[1 − ε, 1 + ε] · η``, weighted mean exact."""

    def __init__(self, opts: AlphaPruningOptions):
        self.opts = opts

    def epsilon(self) -> float:
        o = self.opts
        if not o.absolute:
            return o.epsilon
        return o.epsilon / o.sparsity if o.sparsity > 0 else 0.0

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        o = self.opts
        eps = self.epsilon()
        worse = minmax(scores.worseness())  # [L], 1 = worst trained
        ratios = (1.0 - eps) + 2.0 * eps * worse
        w = _weights(weights, len(ratios), o.weighted)
        if o.overflow == "clip":
            values, clipped = clip_once(ratios, w, o.sparsity, o.max_sparsity)
        else:
            values, clipped = scale_to_mean(ratios, w, o.sparsity, o.max_sparsity)
        if clipped and o.overflow == "clip":
            log.warning("alpha_pruning: layers %s clipped to [0, %s] (overflow: clip), so the mean "
                        "sparsity is below %s", clipped, o.max_sparsity, o.sparsity)
        elif clipped:
            log.warning("alpha_pruning: layers %s clipped to [0, %s] and the others re-balanced so the "
                        "mean stays %s (epsilon %.3g is wide for this sparsity)", clipped,
                        o.max_sparsity, o.sparsity, eps)
        mean = float((values * w).sum() / w.sum())
        return Allocation("sparsity", [float(v) for v in values], "alpha_pruning", {
            "target": o.sparsity, "epsilon": eps, "weighted_mean": mean, "clipped": clipped,
            "scorer": scores.scorer, "higher_is_better": scores.higher_is_better})


class OWLSparsity:
    """OWL's layer-wise sparsity: ``s − mean(d) + d_l`` with ``d`` the worse-ness in ``[0, 2λ]``."""

    def __init__(self, opts: OWLSparsityOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        o = self.opts
        d = minmax(scores.worseness()) * 2.0 * o.lamda
        values = o.sparsity - d.mean() + d
        if float(values.min()) < 0 or float(values.max()) >= 1:
            raise BudgetError(f"owl_sparsity: sparsity {o.sparsity} ± lamda {o.lamda} leaves [0, 1); "
                              "lower lamda.")
        return Allocation("sparsity", [float(v) for v in values], "owl_sparsity",
                          {"target": o.sparsity, "lamda": o.lamda, "scorer": scores.scorer})


# α of DLP's and LSA's code for the target sparsity, indexed as they index it: ``int(s · 10)``
# (BeiYazi0/LSA ``layersp/dlp.py`` and ``layersp/blk.py``, ``self.alpha``; DLP's own scripts use 0.15
# at s = 0.7). Index 0 is their N:M setting and has no value for unstructured targets.
AUTHORS_ALPHA = {1: 0.06, 2: 0.02, 3: 0.04, 4: 0.02, 5: 0.04, 6: 0.1, 7: 0.15, 8: 0.12}


def authors_alpha(sparsity: float) -> float:
    """α of the authors' table for ``sparsity`` (``int(sparsity · 10)`` as they index it)."""
    key = int(sparsity * 10)
    if key not in AUTHORS_ALPHA:
        raise ConfigError(f"dlp_sparsity: the authors give no alpha for sparsity {sparsity} (only "
                          "0.1 to 0.89); set allocation.options.alpha.")
    return AUTHORS_ALPHA[key]


class DLPSparsity:
    """DLP's (and LSA's, ALP's) map: ``s + e − mean(e)``, ``e = 2α · minmax(worse-ness)``."""

    def __init__(self, opts: DLPSparsityOptions):
        self.opts = opts

    def alpha(self) -> float:
        return self.opts.alpha if self.opts.alpha is not None else authors_alpha(self.opts.sparsity)

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        o = self.opts
        alpha = self.alpha()
        e = minmax(scores.worseness()) * 2.0 * alpha  # [L] float64
        w = _weights(weights, len(e), o.weighted)
        values = o.sparsity + e - (e * w).sum() / w.sum()
        if float(values.min()) < 0 or float(values.max()) >= 1:
            raise BudgetError(f"dlp_sparsity: sparsity {o.sparsity} with alpha {alpha} gives layer "
                              f"sparsities in [{float(values.min()):.3g}, {float(values.max()):.3g}], "
                              "outside [0, 1); lower alpha.")
        mean = float((values * w).sum() / w.sum())
        return Allocation("sparsity", [float(v) for v in values], "dlp_sparsity", {
            "target": o.sparsity, "alpha": alpha, "weighted_mean": mean, "scorer": scores.scorer,
            "higher_is_better": scores.higher_is_better})


def _centred_depth(weights: torch.Tensor) -> torch.Tensor:
    """``l − l̄`` with ``l̄ = Σ p_l l / Σ p_l``, float64 ``[L]``."""
    depth = torch.arange(len(weights), dtype=torch.float64)
    return depth - (weights * depth).sum() / weights.sum()


def atp_sparsities(target: float, beta: float, weights: torch.Tensor) -> torch.Tensor:
    """ATP's progression ``S + β (l − l̄)``: weighted mean exactly ``target``, step ``beta``."""
    return target + beta * _centred_depth(weights)


def max_beta(target: float, weights: torch.Tensor) -> float:
    """The largest β that keeps every layer of ATP's progression in ``[0, 1]``; with equal blocks the
    authors' bound ``min(2S/(L−1), 2(1−S)/(L−1))``."""
    d = _centred_depth(weights)
    if len(d) < 2:
        return float("inf")
    return min(target / float(-d.min()), (1.0 - target) / float(d.max()))


def beta_grid(target: float, weights: torch.Tensor, step: float = 0.002) -> list[float]:
    """The authors' search grid (``search.sh``): ``step, 2·step, …`` while legal (:func:`max_beta`)."""
    top = max_beta(target, weights)
    grid, k = [], 1
    while round(k * step, 12) <= top + 1e-12 and k <= 100_000:
        grid.append(round(k * step, 12))
        k += 1
    return grid


class ATPSparsity:
    """ATP's arithmetic progression over depth with a given common difference β (scores unused)."""

    def __init__(self, opts: ATPSparsityOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        o = self.opts
        w = _weights(weights, len(scores.values), True)
        top = max_beta(o.sparsity, w)
        if o.beta > top + 1e-12:
            raise BudgetError(f"atp_sparsity: beta {o.beta} puts a layer's sparsity outside [0, 1] at "
                              f"sparsity {o.sparsity} over {len(w)} layers; use beta <= {top:.6g}.")
        values = atp_sparsities(o.sparsity, o.beta, w).clamp(0.0, 1.0)
        mean = float((values * w).sum() / w.sum())
        return Allocation("sparsity", [float(v) for v in values], "atp_sparsity", {
            "target": o.sparsity, "beta": o.beta, "max_beta": top, "weighted_mean": mean})
