"""The numbers of a study's summary (architecture §9): per arm and grid point the mean over seeds ±
the half-width of its 95% confidence interval, and per arm the paired difference to the control
on the same seed with its interval, the paired test's p-value, wins / ties / losses and the power
of the comparison (:mod:`layerif_core.study.power`).

- Mean and interval: ``x̄ ± t_{0.975, n−1} · s / √n`` (s the sample standard deviation over the n
  seeds; Student's t interval).
- Paired difference: ``d_s = arm_s − control_s`` over the seeds both have; its mean ``d̄`` and the
  same t interval of ``d_s``; the two-sided p-value of the paired t-test (``scipy.stats.ttest_rel``)
  or of the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``). The same against each of the
  study's ``references`` (``versus``).
- Rank: per grid point, 1 + the number of arms with a better mean (equal means share a rank).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

from layerif_core.errors import closest
from layerif_core.study.config import MetricSpec, StudyError
from layerif_core.study.power import paired_power, pooled_power
from layerif_core.study.records import StudyData, point_key


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """Mean and the half-width of its 95% t confidence interval (NaN for fewer than 2 values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if max(values) == min(values):  # one value, or equal ones: summing would leave 1e-17 in the mean
        return values[0], (0.0 if n > 1 else math.nan), n
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n


def paired_p(arm: list[float], control: list[float], test: str) -> float:
    """Two-sided p-value of the paired test of ``arm`` against ``control`` (NaN when undefined)."""
    from scipy import stats

    diffs = [a - c for a, c in zip(arm, control, strict=True)]
    if len(arm) < 2 or not any(diffs):
        return math.nan
    # equal differences (e.g. every seed one question of 100 worse): the t statistic is not defined
    # (zero spread), and scipy returns p = 0 from the rounding residue of the subtractions
    if test == "t" and max(diffs) - min(diffs) <= 1e-9 * max(1.0, *(abs(c) for c in control)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = stats.ttest_rel(arm, control) if test == "t" else stats.wilcoxon(arm, control)
        except ValueError:
            return math.nan
    return float(res.pvalue)


def tie(a: float, c: float) -> bool:
    """Equal to 1e-9 relative: a tie in wins / ties / losses."""
    return abs(a - c) <= 1e-9 * max(1.0, abs(c))


def mean_diff(a: list[float], c: list[float]) -> float:
    """Mean of ``a - c``, 0 where it is rounding (equal means of different values, e.g. accuracies)."""
    if not a:
        return math.nan
    diff = math.fsum(x - y for x, y in zip(a, c, strict=True)) / len(a)
    return 0.0 if abs(diff) <= 1e-12 * max(map(abs, a + c)) else diff


def metric_specs(data: StudyData) -> list[MetricSpec]:
    """The metrics of the report: the study's list (each reported by some cell), else all."""
    reported = sorted({m for c in data.ok for m in c.metrics})
    if not data.study.metrics:
        return [MetricSpec(name=m) for m in reported]
    for spec in data.study.metrics:
        if spec.name not in reported:
            raise StudyError(f"metric '{spec.name}' was reported by no cell{closest(spec.name, reported)}; "
                             f"the cells report: {', '.join(reported) or 'nothing yet'}.")
    return list(data.study.metrics)


def paired(seeds: dict[int, float], ctrl: dict[int, float], goal: str, test: str,
           target: float | None) -> dict[str, Any]:
    """The comparison of one arm with the control at one grid point, over the seeds both have."""
    common = sorted(set(seeds) & set(ctrl))
    a, c = [seeds[s] for s in common], [ctrl[s] for s in common]
    diffs = [x - y for x, y in zip(a, c, strict=True)]
    sign = {"lower": -1, "higher": 1, "none": 0}[goal]
    ties = [tie(x, y) for x, y in zip(a, c, strict=True)]
    gains = [sign * d for d in diffs]
    return {"n": len(common), "diff_mean": mean_diff(a, c), "diff_ci95": mean_ci(diffs)[1],
            "p": paired_p(a, c, test),
            "wins": sum(1 for g, t in zip(gains, ties, strict=True) if not t and g > 0),
            "ties": sum(ties),
            "losses": sum(1 for g, t in zip(gains, ties, strict=True) if not t and g < 0),
            "power": paired_power(diffs, test, target).to_json()}


def summarize(data: StudyData) -> dict[str, Any]:
    """Every number of the summary (also written as ``summary.json``)."""
    axes, arms = data.axes, [a.label for a in data.study.arms]
    control = data.study.control.label
    by: dict[tuple, dict[int, float]] = defaultdict(dict)  # (metric, arm, point) -> seed -> value
    for cell in data.ok:
        for metric, value in cell.metrics.items():
            by[(metric, cell.arm, point_key(cell.grid, axes))][cell.seed] = value
    out: dict[str, Any] = {"control": control, "test": data.study.test, "metrics": []}
    for spec in metric_specs(data):
        goal = spec.goal()
        entry: dict[str, Any] = {"name": spec.name, "better": goal, "dense": data.dense.get(spec.name),
                                 "target_effect": spec.target_effect, "points": []}
        for values in data.points():
            grid = dict(zip(axes, values, strict=True))
            point = point_key(grid, axes)
            rows = []
            ctrl = by.get((spec.name, control, point), {})
            for arm in arms:
                seeds = by.get((spec.name, arm, point), {})
                mean, ci, n = mean_ci([seeds[s] for s in sorted(seeds)])
                row: dict[str, Any] = {"arm": arm, "mean": mean, "ci95": ci, "n": n,
                                       "values": {str(s): seeds[s] for s in sorted(seeds)}}
                if arm != control:
                    row["paired"] = paired(seeds, ctrl, goal, data.study.test, spec.target_effect)
                row["versus"] = {ref: paired(seeds, by.get((spec.name, ref, point), {}), goal,
                                             data.study.test, None)
                                 for ref in data.study.references if ref != arm}
                rows.append(row)
            finite = [r for r in rows if r["n"]]
            if finite and goal != "none":
                pick = min if goal == "lower" else max
                best = pick(r["mean"] for r in finite)
                sign = -1 if goal == "lower" else 1
                for r in rows:
                    r["best"] = bool(r["n"]) and r["mean"] == best
                    # 1 + the arms with a better mean: equal means share a rank
                    better = sum(sign * (o["mean"] - r["mean"]) > 0 for o in finite)
                    r["rank"] = 1 + better if r["n"] else None
            pooled = (pooled_power({arm: by.get((spec.name, arm, point), {}) for arm in arms},
                                   len(data.study.seeds), data.study.test, spec.target_effect)
                      if goal != "none" else None)  # a measurement has no power table
            entry["points"].append({"grid": grid, "rows": rows, "pooled_power": pooled})
        out["metrics"].append(entry)
    return out
