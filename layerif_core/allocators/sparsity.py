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
- ``uniform_sparsity``: ``s_l = s`` for every layer (the control of every study).

Equal scores get equal sparsity; when all scores are equal every allocator is uniform.
"""

from __future__ import annotations

import logging

import torch

from layerif_core.allocators.options import AlphaPruningOptions, OWLSparsityOptions, UniformSparsityOptions
from layerif_core.errors import ConfigError
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
        raise ConfigError(f"target sparsity {target} cannot be reached with layers clipped to "
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
            raise ConfigError(f"owl_sparsity: sparsity {o.sparsity} ± lamda {o.lamda} leaves [0, 1); "
                              "lower lamda.")
        return Allocation("sparsity", [float(v) for v in values], "owl_sparsity",
                          {"target": o.sparsity, "lamda": o.lamda, "scorer": scores.scorer})
