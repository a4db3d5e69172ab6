"""The report's curve plot shows every arm's training curve: one line per arm that recorded it, each
at its own first seed when another arm's first cell failed or has no curve, with the step that
early stopping kept marked; a study of 12 arms gets 12 distinguishable lines."""

from __future__ import annotations

from pathlib import Path

from layerif_core.study.config import StudyConfig
from layerif_core.study.plots import draw_curve, plot_curves
from layerif_core.study.records import CellRecord, StudyData
from layerif_core.study.report import curve_cells

NAME = "lora_moe/holdout_loss"


def record(arm: str, seed: int, curve: list[list[float]] | None, best: float | None = None,
           status: str = "ok") -> CellRecord:
    metrics = {"acc": 0.5} if best is None else {"acc": 0.5, "train/best_step": best}
    return CellRecord(f"{arm}-s{seed}", arm, {}, seed, status=status, metrics=metrics,
                      curves={NAME: curve} if curve else {})


def study_of(arms: list[str], seeds: list[int], cells: list[CellRecord], tmp_path: Path) -> StudyData:
    config = StudyConfig.model_validate({
        "name": "s", "base": {}, "seeds": seeds, "metrics": ["acc"],
        "arms": [{"label": a, "control": i == 0} for i, a in enumerate(arms)]})
    return StudyData(tmp_path, config, {}, cells)


def test_every_arm_gets_its_first_seed_that_recorded_the_curve(tmp_path):
    """uniform's seed-0 cell failed and layerif's seed-0 cell has no curve: both are drawn from
    seed 1, depth from seed 0; the failed cell's curve is not used."""
    down, flat = [[0.0, 2.0], [20.0, 1.5], [40.0, 1.7]], [[0.0, 2.0], [20.0, 2.0]]
    cells = [record("uniform", 0, flat, status="failed"), record("uniform", 1, down),
             record("layerif", 0, None), record("layerif", 1, flat), record("layerif", 2, down),
             record("depth", 0, down), record("depth", 1, flat)]
    data = study_of(["uniform", "layerif", "depth"], [0, 1, 2], cells, tmp_path)
    plotted = curve_cells(data, NAME)
    assert [(c.arm, c.seed) for c in plotted] == [("uniform", 1), ("layerif", 1), ("depth", 0)]
    fig = draw_curve(NAME, plotted, 3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "uniform (seed 1)", "layerif (seed 1)", "depth (seed 0)"]
    lines = [line for line in ax.get_lines() if line.get_label() in {"uniform (seed 1)", "layerif (seed 1)",
                                                                        "depth (seed 0)"}]
    assert [line.get_xydata().tolist() for line in lines] == [down, flat, down]
    assert "each arm's first seed" in ax.get_title()


def test_the_kept_step_is_starred_and_twelve_arms_stay_apart(tmp_path):
    """12 arms at seed 0, each with best step 20: one line per arm, no two with the same colour and
    line style, one star per arm at (20, its loss at step 20); the title names the one seed."""
    arms = [f"arm {i}" for i in range(12)]
    cells = [record(a, 0, [[0.0, 3.0], [20.0, 1.0 + i / 10], [40.0, 2.0]], best=20.0)
             for i, a in enumerate(arms)]
    plotted = curve_cells(study_of(arms, [0], cells, tmp_path), NAME)
    assert [c.arm for c in plotted] == arms
    ax = draw_curve(NAME, plotted, len(arms)).axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() in arms]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [line.get_label() for line in lines] == arms
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 12
    assert [star.get_xydata().tolist() for star in stars] == [[[20.0, 1.0 + i / 10]] for i in range(12)]
    assert "(seed 0;" in ax.get_title()
    written = plot_curves({NAME: plotted}, len(arms), tmp_path)
    assert [p.name for p in written] == ["curve_lora_moe_holdout_loss.png"]
    assert written[0].stat().st_size > 5_000
    assert plot_curves({NAME: []}, 12, tmp_path) == []
