"""Power of a study's paired comparisons: the smallest difference it could detect, and the seeds an
effect needs (the report's "MDE (80%)" and "seeds for target" columns).

The paired t-test of n differences with standard deviation s rejects at two-sided level α when
``|T| > t_{1−α/2, n−1}``; under a true mean difference d, T follows the noncentral t distribution
with n − 1 degrees of freedom and noncentrality ``δ = d·√n / s`` (Cohen 1988, *Statistical Power
Analysis for the Behavioral Sciences*, ch. 2; G*Power's "difference from constant, matched pairs"):

    power(n, d) = P(T > t_crit) + P(T < −t_crit),   T ~ t'(n − 1, d·√n / s)

- minimum detectable effect (MDE): the smallest |d| with power ≥ 0.8, found by root search on the
  exact power (not the normal approximation, which is far off at a handful of seeds: n = 10 needs
  d = 0.994·s, not 0.886·s);
- seeds for a target effect e: the smallest n ≥ 2 with power(n, e) ≥ 0.8;
- pooled over the arms (a pilot's reading): the arm × seed table as a randomized block design,
  ``y[a, s] = μ_a + τ_s + e[a, s]`` with the training noise e alike in every arm; the residual mean
  square of that additive fit (least squares, df = cells − arms − seeds + 1 on a complete table)
  estimates σ², a paired difference between two arms varies by ``s_p = √(2σ²)``, and the MDE (at
  the seeds the study plans) and the seeds above are read at s_p. One arm's SD from 2–3 seeds is
  too rough to size a study on (a 3-seed SD's 95% interval spans 0.52–6.3 times the true one), and
  pooling the arms' SDs against the control would put the control's own noise into every term:
  the block fit uses every arm alike. An arm whose values repeat another's exactly (the same
  allocation) counts once.

The Wilcoxon signed-rank test has no closed-form power; it is taken as the t-test's at ``n·3/π``
pairs, its asymptotic relative efficiency for normal differences (Lehmann 1975, *Nonparametrics*,
ch. 2, the "A.R.E. method" of power programs). It is optimistic at few pairs, where the exact test's
p-values are coarse: at the MDE it gives, 6 pairs reach 66% power, 8 reach 76%, 20 reach 80%
(simulated). Below 6 pairs no outcome reaches p < 0.05 (the smallest two-sided exact p-value is
2/2ⁿ), so nothing is detectable there.

The spread s is the one observed in the study, itself uncertain at a few seeds: the figures say what
the study could resolve if that spread is typical, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 10_000
WILCOXON_ARE = 3 / math.pi
WILCOXON_MIN_PAIRS = 6  # 2 / 2**n < 0.05

# why a figure is missing (the report prints them as footnotes)
FEW_PAIRS = "fewer than 2 seeds paired with the control"
NO_SPREAD = "the paired differences do not vary (s = 0): no spread to size an effect against"
WILCOXON_FLOOR = (f"the Wilcoxon test cannot reach p < {ALPHA} with fewer than {WILCOXON_MIN_PAIRS} "
                  "pairs")


def t_power(n: float, dz: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired (one-sample) t-test with ``n`` pairs at the standardized effect
    ``dz = d / s``; ``n`` may be fractional (the Wilcoxon's effective pairs)."""
    from scipy import stats

    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = dz * math.sqrt(n)
    upper = float(stats.nct.sf(crit, df, nc))
    lower = float(stats.nct.cdf(-crit, df, nc))
    # scipy returns NaN for the far lower tail at a large noncentrality (< 1e-10 where it does)
    return upper + (lower if math.isfinite(lower) else 0.0)


def effective_pairs(n: int, test: str) -> float | None:
    """The t-test's n that stands for ``n`` pairs of ``test``; None when it can detect nothing."""
    if test == "wilcoxon":
        return None if n < WILCOXON_MIN_PAIRS else n * WILCOXON_ARE
    return None if n < 2 else float(n)


def mde_dz(n: int, test: str = "t", alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest standardized effect |d| / s that ``n`` pairs detect with ``power``; None below
    the test's minimum number of pairs."""
    from scipy.optimize import brentq

    n_eff = effective_pairs(n, test)
    if n_eff is None:
        return None
    hi = 1.0
    while t_power(n_eff, hi, alpha) < power:  # power rises with dz from alpha to 1
        hi *= 2
    return float(brentq(lambda dz: t_power(n_eff, dz, alpha) - power, 0.0, hi, xtol=1e-12, rtol=1e-12))


def seeds_for(dz: float, test: str = "t", alpha: float = ALPHA, power: float = POWER,
              cap: int = MAX_SEEDS) -> int | None:
    """The smallest number of seeds (pairs) with ``power`` at the standardized effect ``dz``; None
    when more than ``cap`` are needed. Power rises with n, so a bisection over n finds it."""
    lo = WILCOXON_MIN_PAIRS if test == "wilcoxon" else 2

    def enough(n: int) -> bool:
        n_eff = effective_pairs(n, test)
        return n_eff is not None and t_power(n_eff, abs(dz), alpha) >= power

    if enough(lo):
        return lo
    if not enough(cap):
        return None
    while cap - lo > 1:  # enough(cap) and not enough(lo)
        mid = (lo + cap) // 2
        lo, cap = (lo, mid) if enough(mid) else (mid, cap)
    return cap


@dataclass
class Power:
    """What a paired comparison could detect: its MDE (in the metric's units) and the seeds its
    target effect needs; ``note`` says why a figure is missing."""

    n: int
    sd: float | None
    mde: float | None
    seeds: int | None = None
    seeds_over_cap: bool = False
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "sd": self.sd, "mde": self.mde, "seeds_for_target": self.seeds,
                "seeds_over_cap": self.seeds_over_cap, "note": self.note}


def pooled_power(table: dict[str, dict[int, float]], seeds: int, test: str = "t",
                 target: float | None = None) -> dict[str, object] | None:
    """The spread of a paired difference from the arm × seed ``table`` (arm -> seed -> value) by
    the additive block fit, the MDE at ``seeds`` pairs (the seeds the study plans) and the seeds
    ``target`` needs at that spread; None when the table leaves no residual degree of freedom."""
    import numpy as np

    kept: list[dict[int, float]] = []
    for values in table.values():
        if values and not any(repeats(values, other) for other in kept):
            kept.append(values)
    cells = [(i, s, v) for i, values in enumerate(kept) for s, v in sorted(values.items())]
    order = sorted({s for _, s, _ in cells})
    design = np.zeros((len(cells), len(kept) + len(order)))
    for row, (i, s, _) in enumerate(cells):
        design[row, i] = design[row, len(kept) + order.index(s)] = 1.0
    y = np.array([v for *_, v in cells], dtype=np.float64)
    df = len(cells) - (int(np.linalg.matrix_rank(design)) if cells else 0)
    if df < 1:
        return None
    resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    sd = math.sqrt(2 * float(resid @ resid) / df)
    out = Power(seeds, sd, None)
    if sd <= 1e-12 * max(1.0, float(np.abs(y).max())):
        out.note = NO_SPREAD
    else:
        dz = mde_dz(seeds, test)
        out.mde, out.note = (None, WILCOXON_FLOOR) if dz is None else (dz * sd, None)
        if target is not None:
            out.seeds = seeds_for(target / sd, test)
            out.seeds_over_cap = out.seeds is None
    return {**out.to_json(), "arms": sum(len(v) >= 2 for v in kept), "df": df}


def repeats(a: dict[int, float], b: dict[int, float]) -> bool:
    """Whether ``a`` repeats ``b``: equal on every seed they share, and they share two or more."""
    common = set(a) & set(b)
    return len(common) >= 2 and all(a[s] == b[s] for s in common)


def paired_power(diffs: list[float], test: str = "t", target: float | None = None) -> Power:
    """MDE of the paired differences ``diffs`` (arm − control per seed) at their observed standard
    deviation, and the seeds ``target`` needs at that spread."""
    n = len(diffs)
    if n < 2:
        return Power(n, None, None, note=FEW_PAIRS)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return Power(n, sd, None, note=NO_SPREAD)
    dz = mde_dz(n, test)
    out = Power(n, sd, None if dz is None else dz * sd, note=None if dz is not None else WILCOXON_FLOOR)
    if target is not None:
        out.seeds = seeds_for(target / sd, test)
        out.seeds_over_cap = out.seeds is None
    return out
