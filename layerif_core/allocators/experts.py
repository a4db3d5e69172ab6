"""Expert allocators (architecture §5): how many LoRA experts each decoder layer gets.

AlphaLoRA / LayerIF form (``alphalora_experts``). With ``w_l`` the layer's worse-ness
(``LayerScores.worseness()``, min-max normalised to [0, 1] by default; LayerIF's Savitzky–Golay
smoothing is the run's ``scorer.postprocess``, applied before any allocator), ``m`` the minimum per
layer and ``E`` the total::

    v_l = w_l ** (beta / temperature)
    f_l = v_l / Σ_j v_j · (E − L·m)
    n_l = ⌊f_l⌋ + m,   then the E − Σ n_l experts left go to the largest fractional parts f_l − ⌊f_l⌋

(largest-remainder / Hamilton rounding; equal fractional parts go to the higher layer index first,
as the LayerIF authors' ``scale_values_final`` orders them), so ``Σ n_l = E`` exactly and every layer
has at least ``m``. Sources: AlphaLoRA (Qing et al. 2024, ``v̂ = α̂^β`` with β = 2.5) and LayerIF
(Askari et al. 2025, arXiv 2505.23811, β = 3, E = 160 over 32 layers). The authors' ``x = max(IF) −
IF`` (their sign, IF < 0 helpful) is ``S − min S`` in layerif's, and ``x^β / Σ x^β`` does not change
when x is divided by its range, so min-maxing first gives their shares. A layer judged worse trained
(for LayerIF: more influence flowing through it) gets more experts. ``beta / temperature`` sharpens
(large) or flattens (small, → uniform) the allocation.

``uniform_experts`` is the control with the same total; ``given_experts`` takes a list from the user.
"""

from __future__ import annotations

import torch

from layerif_core.allocators.options import AlphaLoRAOptions, ExpertOptions, GivenOptions
from layerif_core.allocators.preprocess import minmax
from layerif_core.errors import ConfigError, DataError
from layerif_core.results import Allocation, LayerScores

DEFAULT_PER_LAYER = 4  # total = 4 · L when no total is given


def _total(opts: ExpertOptions, n_layers: int) -> int:
    total = opts.total if opts.total is not None else DEFAULT_PER_LAYER * n_layers
    floor = n_layers * opts.min_per_layer
    if total < floor:
        raise ConfigError(f"expert total {total} is smaller than {n_layers} layers x min_per_layer "
                          f"{opts.min_per_layer} = {floor}; raise total or lower min_per_layer.")
    return total


def largest_remainder(shares: torch.Tensor, units: int, higher_index_first: bool = False) -> list[int]:
    """Split ``units`` integers in proportion to ``shares`` (>= 0) with Hamilton rounding.

    Each entry gets ``⌊units · share / Σ share⌋``; the units left go one each to the largest
    fractional parts (ties: the lower index first, or the higher with ``higher_index_first``).
    Equal shares when Σ share = 0.
    """
    shares = shares.double().clamp_min(0)
    n = shares.numel()
    if float(shares.sum()) <= 0:
        shares = torch.ones(n, dtype=torch.float64)
    f = shares / shares.sum() * units
    base = torch.floor(f)
    # guard floating error: floor(f) must not exceed the units
    base = torch.minimum(base, torch.full_like(base, units))
    left = units - int(base.sum())
    frac = (f - base).tolist()
    order = sorted(range(n), key=lambda i: (-round(frac[i], 12), -i if higher_index_first else i))
    out = [int(b) for b in base.tolist()]
    for i in order[:left]:
        out[i] += 1
    return out


def normalized_worseness(scores: LayerScores, normalize: bool = True) -> torch.Tensor:
    """The worse-ness ``w_l`` >= 0 (larger = worse trained) the expert shares are made of."""
    w = scores.worseness()
    if not torch.isfinite(w).all():
        raise DataError(f"scores of '{scores.scorer}' hold NaN or infinite values; recompute them.")
    if normalize:
        w = minmax(w)
    elif float(w.min()) < 0:
        raise ConfigError(f"scores of '{scores.scorer}' oriented as worse-ness have negative values; "
                          "set normalize: true (min-max) for this scorer.")
    return w.clamp_min(0)


def _top_k(values: list[int]) -> list[int]:
    return [1 if n == 1 else 2 for n in values]


class AlphaLoRAExperts:
    """More experts for worse-trained layers: ``n_l = m + Hamilton(w_l^β share of E − L·m)``."""

    def __init__(self, opts: AlphaLoRAOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        o = self.opts
        n_layers = scores.values.numel()
        total = _total(o, n_layers)
        w = normalized_worseness(scores, o.normalize)
        v = w.pow(o.beta / o.temperature)
        extra = largest_remainder(v, total - n_layers * o.min_per_layer, higher_index_first=True)
        values = [o.min_per_layer + e for e in extra]
        return Allocation("experts", values, "alphalora_experts", {
            "total": total, "min_per_layer": o.min_per_layer, "beta": o.beta,
            "temperature": o.temperature, "normalize": o.normalize,
            "worseness": [float(x) for x in w.tolist()], "scorer": scores.scorer,
            "top_k": _top_k(values),
        })


class UniformExperts:
    """The control: the same total spread evenly (the remainder to the first layers)."""

    def __init__(self, opts: ExpertOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        n_layers = scores.values.numel()
        total = _total(self.opts, n_layers)
        values = largest_remainder(torch.ones(n_layers), total)
        return Allocation("experts", values, "uniform_experts",
                          {"total": total, "min_per_layer": self.opts.min_per_layer,
                           "top_k": _top_k(values)})


class GivenExperts:
    """A user-given number of experts per layer."""

    def __init__(self, opts: GivenOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        values = list(self.opts.values)
        if len(values) != scores.values.numel():
            raise ConfigError(f"given_experts has {len(values)} values for a model with "
                              f"{scores.values.numel()} layers; give one per layer.")
        if min(values) < 1:
            raise ConfigError("given_experts values must all be >= 1 (one expert is plain LoRA).")
        return Allocation("experts", values, "given_experts",
                          {"total": sum(values), "top_k": _top_k(values)})


def expected_total(opts: ExpertOptions, n_layers: int) -> int:
    """The total an expert allocator will hand out for ``n_layers`` layers."""
    return _total(opts, n_layers)


__all__ = ["AlphaLoRAExperts", "UniformExperts", "GivenExperts", "largest_remainder",
           "normalized_worseness"]
