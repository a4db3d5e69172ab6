"""``htsr_alpha``: the heavy-tailed self-regularisation (HT-SR) power-law exponent of each layer.

For every tracked weight matrix ``W`` (``[d_out, d_in]``) the empirical spectral density (ESD) is the
set of eigenvalues of ``WᵀW``, i.e. the squared singular values ``λ`` of ``W``. Its tail is fitted
with a power law ``p(λ) ∝ λ^{-α}`` for ``λ ≥ λ_min`` by the Hill / maximum-likelihood estimator
(Clauset, Shalizi & Newman 2009)::

    α = 1 + n / Σ_{λ_j ≥ λ_min} log(λ_j / λ_min)        (n = number of λ_j ≥ λ_min)

``λ_min`` is chosen among the eigenvalues themselves as the one whose fit has the smallest
Kolmogorov–Smirnov distance ``D = max_j |1 − (λ_j/λ_min)^{1−α} − j/n|`` between the fitted and the
empirical tail CDF. This is AlphaPruning's ``net_esd_estimator`` (Lu et al. 2024, repository
haiquanlu/AlphaPruning, ``lib/esd_utils.py``; AlphaLoRA's ``fix_finger`` is the same ``alpha_peak``
fit), whose candidate sets are:

- ``xmin="peak"`` (AlphaPruning's published ``alpha_peak``, the default): only candidates near the
  peak of the histogram of ``log10 λ`` (100 bins) are searched: ``λ_min ≤ 1.5 · peak``. The source's
  lower bound is ``log10(0.95 · peak)``, compared with ``λ`` itself (a log against a linear value);
  ``peak_lower_bound="source"`` keeps that bound exactly, ``"intended"`` uses ``0.95 · peak``.
- ``xmin="ks"``: every eigenvalue but the largest is a candidate (WeightWatcher's default fit).
- ``xmin="mid"``: no search; ``λ_min`` is the eigenvalue at position ``N / xmin_pos`` (``alpha_mid``).

The spectra are taken of a float32 copy of each weight matrix, whatever dtype the model was loaded
in (a bfloat16 or float16 weight converts to float32 exactly; the eigenvalues are then those of its
Gram matrix in float64, see :func:`esd`); ``weights_precision="float16"``
rounds that copy to float16 first, which is what AlphaPruning's published runs computed (their
``get_llm`` loads the model with ``torch_dtype=torch.float16``, then ``net_esd_estimator`` takes
``svdvals`` of ``matrix.to(torch.float32)``). On SmolLM2-135M the two precisions give alphas that
differ by up to 72% on one matrix (20% on a layer's mean), so the scores' details record the dtype
the weights were loaded in and the precision used.

A layer's score is the mean of its matrices' exponents (AlphaPruning's ``block_wise`` mapping;
``aggregate="median"`` is offered). ``metric="alpha_hat"`` scores ``α · log10 λ_max`` per matrix
(the source's ``alphahat``, WeightWatcher's ``alpha_weighted``). A smaller α means a heavier tail,
i.e. a better-trained layer: ``higher_is_better=False``, and AlphaPruning prunes high-α layers more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.errors import NumericalError
from layerif_core.results import LayerScores
from layerif_core.scorers.options import HTSROptions

_CHUNK = 256  # candidate rows per KS block: [chunk, N] float64


@dataclass
class PowerLawFit:
    """A power-law fit of an ESD's tail."""

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    lambda_max: float


def esd(weight: torch.Tensor) -> torch.Tensor:
    """The ``min(d_out, d_in)`` eigenvalues of ``WᵀW`` (the squared singular values of ``W``),
    ascending, float64.

    Computed as ``eigvalsh`` of the smaller Gram matrix in float64: several times faster than an SVD
    and more accurate than the source's float32 ``svdvals``. Round-off negatives are clipped to 0.
    """
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return torch.linalg.eigvalsh(gram).clamp(min=0)


def weights_copy(weight: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """A float32 copy of ``weight`` (``precision="float32"``), or of ``weight`` rounded to float16
    (``precision="float16"``: ``W.half().float()``, round to nearest even)."""
    w = weight.detach()
    if precision == "float16":
        w = w.to(torch.float16)
    return w.to(torch.float32)


def _candidates(eigs: torch.Tensor, opts: HTSROptions) -> torch.Tensor:
    """Boolean mask over ``eigs[:-1]`` of the λ_min candidates searched."""
    n = eigs.numel()
    valid = torch.ones(n - 1, dtype=torch.bool, device=eigs.device)
    if opts.xmin != "peak":
        return valid
    logs = torch.log10(eigs)
    lo, hi = logs.min(), logs.max()
    counts = torch.histc(logs, bins=opts.bins, min=float(lo), max=float(hi))
    edges = torch.linspace(float(lo), float(hi), opts.bins + 1, dtype=torch.float64, device=eigs.device)
    peak = 10 ** edges[int(torch.argmax(counts))]
    lower = math.log10(0.95 * peak) if opts.peak_lower_bound == "source" else 0.95 * peak
    cand = eigs[:-1]
    return (cand >= lower) & (cand <= 1.5 * peak)


def fit_power_law(eigs: torch.Tensor, opts: HTSROptions | None = None) -> PowerLawFit:
    """Fit ``p(λ) ∝ λ^{-α}`` to the tail of ``eigs`` (any order) with λ_min chosen by KS distance."""
    opts = opts or HTSROptions()
    eigs = torch.sort(eigs.double().flatten()).values
    eigs = eigs[eigs > (opts.evals_thresh if opts.filter_zeros else 0.0)]
    if eigs.numel() < 2:
        raise NumericalError(f"a weight matrix has {eigs.numel()} positive eigenvalue(s); a power "
                             "law needs at least 2: exclude it with layers.regex.")
    n_all = eigs.numel()
    logs = torch.log(eigs)
    if opts.xmin == "mid":
        i = int(n_all / opts.xmin_pos)
        alpha, dist = _fit_at(eigs, logs, torch.tensor([i], device=eigs.device))
        return PowerLawFit(float(alpha[0]), float(eigs[i]), float(dist[0]), n_all - i, float(eigs[-1]))
    valid = _candidates(eigs, opts)
    if not valid.any():  # the source would return α = 0 here; search every candidate instead
        valid = torch.ones(n_all - 1, dtype=torch.bool, device=eigs.device)
    idx = torch.arange(n_all - 1, device=eigs.device)[valid]
    alphas, dists = _fit_at(eigs, logs, idx)
    best = int(torch.argmin(dists))  # first minimum, as torch.argmin in the source
    i = int(idx[best])
    return PowerLawFit(float(alphas[best]), float(eigs[i]), float(dists[best]), n_all - i,
                       float(eigs[-1]))


def _fit_at(eigs: torch.Tensor, logs: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MLE exponent and KS distance for λ_min = ``eigs[i]`` for each ``i`` in ``idx``.

    ``D_i = max_{j ≥ i} |1 − (λ_j/λ_i)^{1−α_i} − (j − i)/n_i|``, set to 1 where ``α_i ≤ 1`` (as the
    source does, so such fits are never chosen unless nothing else is available).
    """
    # eigs, logs: [N] ascending; idx: [C]
    n_all = eigs.numel()
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # Σ_{j≥i} log λ_j
    n = (n_all - idx).double()
    alphas = 1 + n / (suffix[idx] - n * logs[idx])
    dists = torch.ones_like(alphas)
    j = torch.arange(n_all, device=eigs.device)
    for start in range(0, idx.numel(), _CHUNK):
        rows = idx[start:start + _CHUNK]
        a, nn_ = alphas[start:start + _CHUNK, None], n[start:start + _CHUNK, None]
        log_ratio = logs[None, :] - logs[rows, None]  # [C, N]
        gap = (j[None, :] - rows[:, None]).double()
        dev = (1 - torch.exp((1 - a) * log_ratio) - gap / nn_).abs()
        dev = torch.where(gap >= 0, dev, torch.zeros_like(dev))
        d = dev.max(dim=1).values
        ok = torch.isfinite(a[:, 0]) & (a[:, 0] > 1)
        dists[start:start + _CHUNK] = torch.where(ok, d, torch.ones_like(d))
    return alphas, dists


class HTSRScorer:
    """Mean (or median) HT-SR power-law exponent of each layer's weight matrices; lower = better."""

    def __init__(self, options: HTSROptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        opts = self.options
        per_layer: list[list[float]] = []
        xmins: list[list[float]] = []
        loaded: set[str] = set()
        for layer in ctx.track(ctx.layer_map.layers, len(ctx.layer_map), "HT-SR spectra"):
            values, mins = [], []
            for tm in layer:
                weight = tm.weight_matrix(tm.module.weight)
                loaded.add(str(weight.dtype).removeprefix("torch."))
                fit = fit_power_law(esd(weights_copy(weight, opts.weights_precision)), opts)
                value = fit.alpha * math.log10(fit.lambda_max) if opts.metric == "alpha_hat" else fit.alpha
                values.append(value)
                mins.append(fit.xmin)
            per_layer.append(values)
            xmins.append(mins)
        reduce = torch.mean if opts.aggregate == "mean" else _median
        scores = torch.stack([reduce(torch.tensor(v, dtype=torch.float64)) for v in per_layer]).float()
        return LayerScores(scores, False, "htsr_alpha", {
            "metric": opts.metric, "xmin": opts.xmin, "aggregate": opts.aggregate,
            "weights_dtype": ", ".join(sorted(loaded)), "weights_precision": opts.weights_precision,
            "modules": [m.short for m in ctx.layer_map.layers[0]],
            "per_matrix": per_layer, "xmin_values": xmins,
        })


def _median(x: torch.Tensor) -> torch.Tensor:
    """The median; the mean of the two middle values for an even count (as numpy)."""
    s = torch.sort(x).values
    k = s.numel()
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2
