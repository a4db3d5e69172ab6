"""The report's statistics on cells written by hand (no model): Wilcoxon p-values, wins/ties/losses
in the metric's direction, the best mean, a grid given as a list of points, reports of partial
studies."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from layerif_core.study.config import StudyConfig
from layerif_core.study.plots import wants_log_scale
from layerif_core.study.report import build_report, curve_cells, read_study
from layerif_core.study.stats import mean_ci, paired_p

ACC = {  # arm -> seed -> accuracy at the one grid point ("higher is better")
    "uniform": [0.50, 0.55, 0.60, 0.52, 0.58],
    "layerif": [0.56, 0.55, 0.66, 0.61, 0.57],
}


def write_dir(directory: Path, study: dict, cells: list[dict]) -> Path:
    directory.mkdir(parents=True)
    config = StudyConfig.model_validate(study)
    (directory / "study.json").write_text(json.dumps({
        "fingerprint": config.fingerprint(), "study": config.model_dump(mode="json"), "base": {}}))
    (directory / "cells").mkdir()
    for cell in cells:
        (directory / "cells" / f"{cell['id']}.json").write_text(json.dumps(cell))
    return directory


def study(**changes) -> dict:
    data = {"name": "s", "base": {}, "seeds": [0, 1, 2, 3, 4], "test": "wilcoxon",
            "arms": [{"label": "uniform", "control": True}, {"label": "layerif"}],
            "grid": {"allocation.options.total": [90]}, "metrics": ["acc"]}
    data.update(changes)
    return data


def cell(arm: str, seed: int, metrics: dict, grid: dict | None = None) -> dict:
    grid = grid if grid is not None else {"allocation.options.total": 90}
    return {"id": f"{arm}-{seed}-{'-'.join(map(str, grid.values()))}", "arm": arm, "seed": seed,
            "grid": grid, "status": "ok", "metrics": metrics,
            "allocation": {"kind": "experts", "values": [1, 2, 3]},
            "scores": {"values": [0.1, 0.3, 0.2], "higher_is_better": False, "scorer": "x"}}


def test_wilcoxon_p_and_wins_in_the_metrics_direction(tmp_path):
    cells = [cell(arm, s, {"acc": v}) for arm, vals in ACC.items() for s, v in enumerate(vals)]
    directory = write_dir(tmp_path / "s", study(), cells)
    build_report(directory)
    summary = json.loads((directory / "summary.json").read_text())
    rows = summary["metrics"][0]["points"][0]["rows"]
    paired = rows[1]["paired"]
    assert paired["p"] == pytest.approx(stats.wilcoxon(ACC["layerif"], ACC["uniform"]).pvalue, rel=1e-12)
    # higher is better: seeds 0, 2, 3 win, seed 1 ties, seed 4 loses
    assert (paired["wins"], paired["ties"], paired["losses"]) == (3, 1, 1)
    assert rows[1]["best"] and not rows[0]["best"]
    mean = statistics.mean(ACC["layerif"])
    ci = stats.t.ppf(0.975, 4) * statistics.stdev(ACC["layerif"]) / math.sqrt(5)
    text = (directory / "summary.md").read_text()
    assert f"**{mean:.4g} ± {ci:.4g}**" in text
    assert f"(p={paired['p']:.4g}; 3/1/1)" in text


def test_a_grid_of_points_and_a_measurement_metric(tmp_path):
    points = [{"application.options.pruner": "wanda", "application.options.pattern": "unstructured"},
              {"application.options.pruner": "wanda", "application.options.pattern": "2:4"},
              {"application.options.pruner": "sparsegpt", "application.options.pattern": "unstructured"}]
    data = study(grid=points, seeds=[0, 1], test="t",
                 metrics=["ppl", {"name": "sparsity/achieved", "better": "none"}])
    cells = [cell(arm, s, {"ppl": 10.0 + i + s + (arm == "layerif"), "sparsity/achieved": 0.5}, p)
             for i, p in enumerate(points) for arm in ("uniform", "layerif") for s in (0, 1)]
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    rows = list(csv.DictReader((directory / "results.csv").open()))
    assert len(rows) == 3 * 2 * 2 * 2
    assert {(r["application.options.pruner"], r["application.options.pattern"]) for r in rows} == {
        ("wanda", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured")}
    summary = json.loads((directory / "summary.json").read_text())
    ppl, achieved = summary["metrics"]
    assert [p["rows"][0]["mean"] for p in ppl["points"]] == [10.5, 11.5, 12.5]
    # lower is better: layerif is worse by exactly 1 on every seed (p of a constant difference: 0)
    assert all(p["rows"][1]["paired"]["losses"] == 2 for p in ppl["points"])
    assert not any(r.get("best") for p in achieved["points"] for r in p["rows"])  # a measurement
    plots = {p.name for p in (directory / "plots").glob("*.png")}
    assert {"ppl__application_options_pruner.png", "ppl__application_options_pattern.png",
            "allocation.png", "scores.png"} <= plots


def test_the_report_of_a_partial_study_lists_failures_and_missing_cells(tmp_path):
    cells = [cell("uniform", 0, {"acc": 0.5}), cell("layerif", 0, {"acc": 0.6})]
    cells.append({**cell("layerif", 1, {}), "status": "failed", "metrics": {},
                  "error": {"type": "ConfigError", "message": "owl_sparsity: out of range\nmore"}})
    directory = write_dir(tmp_path / "s", study(seeds=[0, 1]), cells)
    build_report(directory)
    text = (directory / "summary.md").read_text()
    assert "2 of 4 cells finished, 1 failed" in text
    assert "`layerif-1-90`: ConfigError: owl_sparsity: out of range" in text
    summary = json.loads((directory / "summary.json").read_text())
    row = summary["metrics"][0]["points"][0]["rows"][1]
    assert row["n"] == 1 and row["ci95"] is None and row["paired"]["p"] is None  # undefined: null


def test_a_study_in_progress_shows_only_the_arms_and_grid_points_with_finished_cells(tmp_path):
    """Two of three arms and one of two grid points have finished cells: the tables hold those, the
    arm without any is named once, and summary.json keeps every arm and point."""
    grid = {"allocation.options.total": [90, 120]}
    data = study(arms=[{"label": "uniform", "control": True}, {"label": "layerif"}, {"label": "ramp"}],
                 grid=grid, references=["ramp"])
    cells = [cell(arm, s, {"acc": v}) for arm, vals in ACC.items() for s, v in enumerate(vals)]
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    text = (directory / "summary.md").read_text()
    assert "Not run yet (no finished cell): ramp." in text
    assert "| arm | total=90 |" in text and "total=120" not in text
    assert "| ramp" not in text and "Paired difference to ramp" not in text
    summary = json.loads((directory / "summary.json").read_text())
    assert len(summary["metrics"][0]["points"]) == 2 and len(summary["metrics"][0]["points"][0]["rows"]) == 3


def test_the_ranks_of_every_grid_point_side_by_side(tmp_path):
    """With several grid points the summary puts each arm's rank at every point in one table (the
    order can change between points); an arm without a finished cell at a point shows a dash."""
    grid = {"allocation.options.total": [90, 120]}
    data = study(arms=[{"label": "uniform", "control": True}, {"label": "layerif"}, {"label": "ramp"}],
                 grid=grid, seeds=[0, 1])
    means = {90: {"uniform": 0.5, "layerif": 0.7, "ramp": 0.6}, 120: {"uniform": 0.6, "layerif": 0.5}}
    cells = [cell(arm, s, {"acc": v + s / 100}, {"allocation.options.total": g})
             for g, arms in means.items() for arm, v in arms.items() for s in (0, 1)]
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    text = (directory / "summary.md").read_text()
    table = text.split("Rank per grid point")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| arm | total=90 | total=120 |"
    assert table[2:] == ["| uniform (control) | 3 | 1 |", "| layerif | 1 | 2 |", "| ramp | 2 | – |"]
    one_point = write_dir(tmp_path / "one", study(seeds=[0, 1]), [c for c in cells if c["grid"][
        "allocation.options.total"] == 90 and c["arm"] != "ramp"])
    build_report(one_point)
    assert "Rank per grid point" not in (one_point / "summary.md").read_text()  # the board says it


def test_influence_mass_groups_arms_that_share_their_influences(tmp_path):
    """+VE and ALL score from the same influence matrices: one entry for both, the mean over the two
    seeds; a second estimator gets its own; an arm without influences (uniform) none."""
    from layerif_core.study.report import influence_mass, read_study

    def scored(arm, seed, matrix, helpful, harmful):
        c = cell(arm, seed, {"acc": 0.5})
        c["scores"]["details"] = {"influence_fingerprint": matrix, "helpful_mass": helpful,
                                  "harmful_mass": harmful}
        return c

    cells = [cell("uniform", s, {"acc": 0.5}) for s in (0, 1)]
    cells += [scored(arm, s, f"dinf{s}", [1.0 + s, 2.0, 3.0], [0.1, 0.0, 0.2 * s])
              for arm in ("+VE", "ALL") for s in (0, 1)]
    cells += [scored("EK-FAC", s, f"ekfac{s}", [3.0, 2.0, 1.0], [0.0, 0.5, 0.0]) for s in (0, 1)]
    arms = [{"label": "uniform", "control": True}, {"label": "+VE"}, {"label": "ALL"}, {"label": "EK-FAC"}]
    directory = write_dir(tmp_path / "s", study(seeds=[0, 1], arms=arms), cells)
    panels = sorted(influence_mass(read_study(directory)), key=lambda p: p["arms"])
    assert panels == [
        {"arms": ["+VE", "ALL"], "matrices": 2, "helpful": [1.5, 2.0, 3.0], "harmful": [0.1, 0.0, 0.1]},
        {"arms": ["EK-FAC"], "matrices": 2, "helpful": [3.0, 2.0, 1.0], "harmful": [0.0, 0.5, 0.0]}]
    build_report(directory)
    assert (directory / "plots" / "influence_mass.png").stat().st_size > 5_000


def test_a_recorded_curve_is_plotted_for_the_first_seed(tmp_path):
    cells = []
    for arm in ("uniform", "layerif"):
        for s in (0, 1):
            c = cell(arm, s, {"acc": 0.5})
            c["curves"] = {"lora_moe/validation_loss": [[0, 2.0], [10, 1.0 + s], [20, 0.5]]}
            cells.append(c)
    directory = write_dir(tmp_path / "s", study(seeds=[0, 1]), cells)
    build_report(directory)
    assert (directory / "plots" / "curve_lora_moe_validation_loss.png").stat().st_size > 5_000
    assert "curve_lora_moe_validation_loss" in (directory / "report.html").read_text()
    plotted = curve_cells(read_study(directory), "lora_moe/validation_loss")
    assert [(c.arm, c.seed) for c in plotted] == [("uniform", 0), ("layerif", 0)]


def test_the_curve_plot_takes_the_first_seed_that_recorded_one(tmp_path):
    """Seed 0's cells carry no curve (restored from a results table, say): seed 1's are plotted."""
    cells = [cell(arm, s, {"acc": 0.5}) for arm in ("uniform", "layerif") for s in (0, 1)]
    for c in cells[1::2]:
        c["curves"] = {"loss": [[0, 2.0], [10, 1.0]]}
    directory = write_dir(tmp_path / "s", study(seeds=[0, 1]), cells)
    plotted = curve_cells(read_study(directory), "loss")
    assert [c.id for c in plotted] == [cells[1]["id"], cells[3]["id"]]


def test_equal_means_of_different_values_differ_by_exactly_zero(tmp_path):
    """Accuracies 0.73, 0.65, ... against 0.67, 0.68, ...: the same mean, so the difference is 0,
    not the 3e-17 that summing the rounded differences leaves."""
    acc = {"uniform": [0.67, 0.68, 0.69, 0.69], "layerif": [0.73, 0.65, 0.68, 0.67]}
    assert sum(a - u for a, u in zip(acc["layerif"], acc["uniform"], strict=True)) != 0
    cells = [cell(arm, s, {"acc": v}) for arm, vals in acc.items() for s, v in enumerate(vals)]
    directory = write_dir(tmp_path / "s", study(seeds=[0, 1, 2, 3]), cells)
    build_report(directory)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["metrics"][0]["points"][0]["rows"][1]["paired"]["diff_mean"] == 0.0
    assert "| 0 (p=" in (directory / "summary.md").read_text()


def test_paired_p_is_undefined_for_equal_differences_under_the_t_test():
    """Accuracy on 100 questions, both seeds one question worse: the differences have no spread,
    so the paired t statistic is undefined (scipy answers p = 0 from the rounding residue of
    0.66 - 0.67 and 0.67 - 0.68); Wilcoxon ranks them and keeps its p. Otherwise scipy's p."""
    arm, control = [0.66, 0.67], [0.67, 0.68]
    with pytest.warns(RuntimeWarning, match="catastrophic cancellation"):  # scipy's own doubt
        assert stats.ttest_rel(arm, control).pvalue < 1e-6  # what the report printed before
    assert math.isnan(paired_p(arm, control, "t"))
    assert math.isnan(paired_p(control, control, "t")) and math.isnan(paired_p([1.0], [2.0], "t"))
    five, base = [0.5, 0.6, 0.7, 0.8, 0.9], [0.51, 0.61, 0.71, 0.81, 0.91]
    assert paired_p(five, base, "wilcoxon") == pytest.approx(stats.wilcoxon(five, base).pvalue)
    arm, control = [44.1, 43.7, 45.4], [46.4, 45.8, 46.2]
    assert paired_p(arm, control, "t") == pytest.approx(stats.ttest_rel(arm, control).pvalue, rel=1e-12)


def test_mean_ci_of_equal_values_is_the_value_with_no_width():
    """Five seeds that reach the same achieved sparsity: mean that value, interval exactly 0 (the
    summed mean is off by 1e-17 and the interval printed as 7.706e-17); other values as scipy's."""
    same = [0.49918077256944443] * 5  # LayerIF +VE at 50%, pruning study
    assert sum(same) / 5 != same[0]  # the rounding this guards against
    assert mean_ci(same) == (same[0], 0.0, 5)
    assert mean_ci([2.0])[0] == 2.0 and math.isnan(mean_ci([2.0])[1])
    values = [46.4, 45.8, 46.2, 46.5, 45.5]
    mean, ci, n = mean_ci(values)
    sem = stats.sem(values)
    assert (mean, n) == (pytest.approx(statistics.mean(values)), 5)
    assert ci == pytest.approx(stats.t.ppf(0.975, 4) * sem)


def test_cells_from_two_processors_are_counted_and_the_summary_warns(tmp_path):
    """A rerun on another CPU rounds differently; a report allowed to mix them says which cells ran
    where (tests/studies/test_one_processor.py: without the flag it refuses)."""
    from layerif_core.artifacts import package_versions

    here = package_versions()
    assert here["cpu"] and here["cpu_capability"]  # this machine's, recorded by every cell
    other = {**here, "cpu": "Other CPU", "cpu_capability": "DEFAULT"}
    cells = [cell(arm, s, {"acc": v}) | {"versions": here if s < 3 else other}
             for arm, vals in ACC.items() for s, v in enumerate(vals)]
    cells[0].pop("versions")
    directory = write_dir(tmp_path / "s", study(), cells)
    build_report(directory, allow_mixed_hardware=True)
    md = (directory / "summary.md").read_text()
    mine = f"{here['cpu']} ({here['cpu_capability']})"
    assert f"Hardware: {mine}, 5 cells; Other CPU (DEFAULT), 4 cells; not recorded, 1 cell." in md
    assert "compare arms whose cells ran on the same hardware" in md
    assert f"&quot;{mine}&quot;: 5" in (directory / "report.html").read_text()

    one = write_dir(tmp_path / "one", study(), [c | {"versions": here} for c in cells])
    build_report(one)
    md = (one / "summary.md").read_text()
    assert f"Hardware: {mine}, all 10 cells." in md and "same hardware" not in md


def test_a_metric_spanning_more_than_a_factor_ten_is_plotted_on_a_log_axis():
    assert wants_log_scale([44.0, 101.9, 593.7])  # perplexity at 50%, 60%, 70% sparsity
    assert not wants_log_scale([0.67, 0.70])  # accuracies
    assert not wants_log_scale([-0.5, 10.0])  # a difference can be negative
    assert not wants_log_scale([])


def test_references_add_paired_differences_and_ranks_follow_the_metrics_direction(tmp_path):
    """An arm named in ``references`` is compared with every other arm seed by seed, as the control
    is; the rank table counts the arms with a better mean."""
    acc = ACC | {"ramp": [0.58, 0.56, 0.60, 0.61, 0.58]}
    data = study(arms=[{"label": "uniform", "control": True}, {"label": "layerif"}, {"label": "ramp"}],
                 references=["ramp"], test="t")
    cells = [cell(arm, s, {"acc": v}) for arm, vals in acc.items() for s, v in enumerate(vals)]
    directory = write_dir(tmp_path / "s", data, cells)
    build_report(directory)
    rows = json.loads((directory / "summary.json").read_text())["metrics"][0]["points"][0]["rows"]
    by_arm = {r["arm"]: r for r in rows}
    versus = by_arm["layerif"]["versus"]["ramp"]
    diffs = [a - b for a, b in zip(acc["layerif"], acc["ramp"], strict=True)]
    assert versus["diff_mean"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert versus["p"] == pytest.approx(stats.ttest_rel(acc["layerif"], acc["ramp"]).pvalue, rel=1e-12)
    # higher is better; layerif against the ramp by seed: .56<.58, .55<.56, .66>.60, .61=.61, .57<.58
    assert (versus["wins"], versus["ties"], versus["losses"]) == (1, 1, 3)
    assert "ramp" not in by_arm["ramp"]["versus"]
    uniform = by_arm["uniform"]["versus"]["ramp"]  # .50<.58, .55<.56, .60=.60, .52<.61, .58=.58
    assert (uniform["wins"], uniform["ties"], uniform["losses"]) == (0, 2, 3)
    # means: ramp .586, layerif .59, uniform .55 -> ranks 2, 1, 3
    assert [by_arm[a]["rank"] for a in ("uniform", "layerif", "ramp")] == [3, 1, 2]
    text = (directory / "summary.md").read_text()
    assert "Paired difference to ramp:" in text
    # the ranking: best mean first, its paired differences to the control and to the reference
    mde = by_arm["layerif"]["paired"]["power"]["mde"]
    paired = by_arm["layerif"]["paired"]
    board = text.split("Ranking")[1].split("\n\n")[1].splitlines()
    assert board[0] == ("| rank | arm | seeds | mean ± 95% CI | Δ vs uniform (p; W/T/L) | MDE vs control | "
                        "Δ vs ramp (p; W/T/L) |")
    assert [line.split(" | ")[1] for line in board[2:]] == ["layerif", "ramp", "uniform (control)"]
    mean, ci = by_arm["layerif"]["mean"], by_arm["layerif"]["ci95"]
    assert board[2] == (f"| 1 | layerif | 5 | {mean:.4g} ± {ci:.4g} | "
                        f"{paired['diff_mean']:.4g} (p={paired['p']:.4g}; {paired['wins']}/{paired['ties']}/"
                        f"{paired['losses']}) | {mde:.4g} | {statistics.mean(diffs):.4g} "
                        f"(p={versus['p']:.4g}; 1/1/3) |")
    assert board[4].startswith("| 3 | uniform (control) |") and "| – | – |" in board[4]
    assert board[4].endswith("; 0/2/3) |")  # the control against the reference
    assert f"| layerif | {statistics.mean(diffs):.4g} (p={versus['p']:.4g}; 1/1/3) | 1/1/3 |" in text


def test_a_reference_that_is_no_arm_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no arm is labelled 'rmap' \\(did you mean 'ramp'\\?\\)"):
        StudyConfig.model_validate(study(arms=[{"label": "uniform", "control": True}, {"label": "ramp"}],
                                         references=["rmap"]))
    with pytest.raises(ValueError, match="is the control"):
        StudyConfig.model_validate(study(references=["uniform"]))
