"""Power of the paired comparisons (the report's "MDE (80%)" and "seeds for target" columns) against
answers arranged independently: the t-test's power by numerical integration over the sample
variance (no noncentral t), simulations of the tests themselves, and published values."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from test_report_stats import cell, study, write_dir

from layerif_core.study.config import StudyError, load_study
from layerif_core.study.power import (
    FEW_PAIRS,
    NO_SPREAD,
    WILCOXON_FLOOR,
    mde_dz,
    paired_power,
    seeds_for,
    t_power,
)
from layerif_core.study.report import build_report


def power_by_integration(n: int, dz: float) -> float:
    """P(|mean / (S/√n)| > t_crit) for n normal differences with mean dz and SD 1: for each value v
    of (n−1)·S² ~ χ²(n−1) the statistic rejects when the mean leaves ±t_crit·√(v/(n−1)/n)."""
    df = n - 1
    crit = stats.t.ppf(0.975, df)

    def given(v: float) -> float:
        edge = crit * math.sqrt(v / df)  # in units of the mean's standard error, 1/√n
        shift = dz * math.sqrt(n)
        return (stats.norm.sf(edge - shift) + stats.norm.cdf(-edge - shift)) * stats.chi2.pdf(v, df)

    lo, hi = stats.chi2.ppf([1e-13, 1 - 1e-13], df)  # where the χ² mass is (quad misses a narrow peak)
    return integrate.quad(given, lo, hi, epsabs=1e-12, limit=200)[0]


def mde_by_integration(n: int) -> float:
    return optimize.brentq(lambda dz: power_by_integration(n, dz) - 0.8, 0.01, 50, xtol=1e-10)


def test_mde_of_ten_pairs_is_the_exact_textbook_case():
    # n = 10, s = 1, two-sided α = .05, power .8: d = 0.9960 (0.994 reaches only 79.8%; the normal
    # approximation (z_.975 + z_.8)/√10 = 0.886 is far off at a handful of pairs)
    assert mde_dz(10) == pytest.approx(mde_by_integration(10), abs=1e-8)
    assert mde_dz(10) == pytest.approx(0.9960, abs=5e-5)
    assert power_by_integration(10, 0.994) < 0.8
    # R's power.t.test(delta = 0.5, sd = 0.3088401, n = 10, type = "paired"): power = 0.9947832
    assert t_power(10, 0.5 / 0.3088401) == pytest.approx(0.9947832, abs=1e-7)


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_mde_equals_the_integrated_power_root(n):
    assert mde_dz(n) == pytest.approx(mde_by_integration(n), rel=1e-7)


def test_mde_is_what_a_simulated_paired_t_test_detects_80_percent_of_the_time():
    n, sd, trials = 4, 2.5, 40_000
    d = mde_dz(n) * sd
    rng = np.random.default_rng(0)
    diffs = rng.normal(d, sd, size=(trials, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    rate = float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))
    assert abs(rate - 0.8) < 4 * math.sqrt(0.8 * 0.2 / trials)  # 4 standard errors: 0.008


def test_seeds_for_a_target_is_the_smallest_n_with_80_percent_power():
    # dz = 0.5 needs 34 pairs (Cohen 1988, table 2.4.1 for the paired case; G*Power: 34)
    assert seeds_for(0.5) == 34
    assert power_by_integration(34, 0.5) >= 0.8 > power_by_integration(33, 0.5)
    assert seeds_for(-0.5) == 34  # the direction does not matter (two-sided)
    assert seeds_for(30.0) == 2  # the smallest study there is
    assert seeds_for(0.01) is None  # about 78,500 pairs: more than the 10,000 searched


def test_wilcoxon_mde_is_about_what_a_simulated_signed_rank_test_detects():
    n, trials = 20, 4000  # at fewer pairs the approximation is optimistic (6 pairs: 66%, documented)
    d = mde_dz(n, "wilcoxon")
    assert d == pytest.approx(mde_dz(n) * math.sqrt(1 / (3 / math.pi)), rel=0.05)  # ARE 3/π
    rng = np.random.default_rng(1)
    rate = float(np.mean(stats.wilcoxon(rng.normal(d, 1.0, (trials, n)), axis=1).pvalue < 0.05))
    assert 0.76 < rate < 0.84  # an approximation (asymptotic efficiency), not exact


def test_missing_figures_say_why():
    assert paired_power([0.3]).note == FEW_PAIRS and paired_power([0.3]).mde is None
    flat = paired_power([0.2, 0.2, 0.2], target=0.1)
    assert flat.note == NO_SPREAD and flat.mde is None and flat.seeds is None
    few = paired_power([0.1, 0.4, -0.2, 0.3, 0.0], "wilcoxon", target=0.5)
    assert few.note == WILCOXON_FLOOR and few.mde is None  # 5 pairs: smallest p is 2/32 > 0.05
    assert few.seeds == seeds_for(0.5 / statistics.stdev([0.1, 0.4, -0.2, 0.3, 0.0]), "wilcoxon")


ARM = [0.56, 0.55, 0.66, 0.61, 0.57]
CONTROL = [0.50, 0.55, 0.60, 0.52, 0.58]


def test_summary_gives_mde_and_seeds_for_the_target(tmp_path):
    cells = [cell("uniform", s, {"acc": v}) for s, v in enumerate(CONTROL)]
    cells += [cell("layerif", s, {"acc": v}) for s, v in enumerate(ARM)]
    cells.append(cell("broken", 0, {"acc": 0.1}))  # one seed: nothing to size
    arms = [{"label": "uniform", "control": True}, {"label": "layerif"}, {"label": "broken"}]
    data = study(test="t", arms=arms, metrics=[{"name": "acc", "target_effect": 0.0023}])
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    sd = statistics.stdev([a - c for a, c in zip(ARM, CONTROL, strict=True)])
    mde = mde_by_integration(5) * sd
    seeds = 2747  # the smallest n with power >= 0.8 (checked by integration)
    assert power_by_integration(seeds, 0.0023 / sd) >= 0.8 > power_by_integration(seeds - 1, 0.0023 / sd)
    text = (directory / "summary.md").read_text()
    assert "| arm | grid point | pairs | SD of differences | MDE (80%) | seeds for target |" in text
    assert f"| layerif | total=90 | 5 | {sd:.4g} | {mde:.4g} | {seeds} |" in text
    assert "| broken | total=90 | 1 | – | n/a¹ | n/a¹ |" in text
    assert f"¹ {FEW_PAIRS}." in text
    assert "a difference of 0.0023 with 80% power" in text
    summary = json.loads((directory / "summary.json").read_text())
    power = summary["metrics"][0]["points"][0]["rows"][1]["paired"]["power"]
    assert power["mde"] == pytest.approx(mde, rel=1e-6) and power["seeds_for_target"] == seeds
    page = (directory / "report.html").read_text()
    assert "<th>MDE (80%)</th>" in page and "<th>seeds for target</th>" in page


def test_no_target_no_seeds_column_and_a_target_beyond_the_cap(tmp_path):
    cells = [cell(arm, s, {"acc": v, "loss": 1 + v}) for arm, vals in
             (("uniform", CONTROL), ("layerif", ARM)) for s, v in enumerate(vals)]
    data = study(test="t", metrics=["acc", {"name": "loss", "target_effect": 1e-5}])
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    acc, loss = (directory / "summary.md").read_text().split("## loss")
    assert "| MDE (80%) |" in acc and "seeds for target" not in acc
    assert "| > 10000 |" in loss


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "acc", "target_effect": 0}, "target_effect': Input should be greater than 0"),
    ({"name": "sparsity/achieved", "better": "none", "target_effect": 0.1},
     "metric 'sparsity/achieved' is a measurement (better: none) and has no target effect"),
])
def test_a_bad_target_effect_is_one_line(tmp_path, spec, message):
    with pytest.raises(StudyError, match=None) as info:
        load_study(tmp_path / "s.yaml", study(metrics=[spec]))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_pilot_reads_the_paired_spread_from_every_arm_and_seed(tmp_path):
    """Seeds 0-2 of a study that plans 20: the spread of a paired difference from the arm × seed
    table as a randomized block design (double-centred residuals, (A − 1)(S − 1) df), the MDE at
    20 pairs and the seeds the target needs; an arm that repeats another's values counts once, an
    arm with one seed adds nothing."""
    table = {"uniform": [0.70, 0.68, 0.71], "a": [0.66, 0.69, 0.70], "b": [0.72, 0.65, 0.69]}
    cells = [cell(arm, s, {"acc": v}) for arm, vals in table.items() for s, v in enumerate(vals)]
    cells += [cell("repeat of a", s, {"acc": v}) for s, v in enumerate(table["a"])]
    cells.append(cell("c", 0, {"acc": 0.6}))
    arms = [{"label": a} for a in ("uniform", "a", "b", "repeat of a", "c")]
    arms[0]["control"] = True
    data = study(test="t", seeds=list(range(20)), arms=arms,
                 metrics=[{"name": "acc", "target_effect": 0.01}])
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    y = np.array(list(table.values()))
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    sd = math.sqrt(2 * (resid ** 2).sum() / ((3 - 1) * (3 - 1)))
    mde = mde_by_integration(20) * sd
    seeds = next(n for n in range(2, 500) if power_by_integration(n, 0.01 / sd) >= 0.8)
    text = (directory / "summary.md").read_text()
    assert f"| pooled over 3 arms (4 df) | total=90 | 20 planned | {sd:.4g} | {mde:.4g} | {seeds} |" in text
    pooled = json.loads((directory / "summary.json").read_text())["metrics"][0]["points"][0]["pooled_power"]
    assert pooled["sd"] == pytest.approx(sd, rel=1e-9) and pooled["mde"] == pytest.approx(mde, rel=1e-6)
