"""compare-scores: rank correlations of worse-ness oriented score vectors, the plot, and the CLI."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.compare import compare_scores, plot_comparison
from layerif_core.errors import ArtifactError, DataError


def write_run(root: Path, name: str, tasks: dict[str, tuple[str, bool, list[float]]]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    data = {task: {"scorer": scorer, "higher_is_better": hib, "values": values, "details": {}}
            for task, (scorer, hib, values) in tasks.items()}
    (run / "scores.json").write_text(json.dumps(data))
    return run


def spearman_no_ties(a: list[float], b: list[float]) -> float:
    """1 − 6 Σ d² / (n (n² − 1)) on distinct values."""
    def rank(v):
        return {i: r for r, i in enumerate(sorted(range(len(v)), key=v.__getitem__))}
    ra, rb, n = rank(a), rank(b), len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def kendall_no_ties(a: list[float], b: list[float]) -> float:
    """(concordant − discordant) / (n choose 2)."""
    pairs = list(combinations(range(len(a)), 2))
    s = sum(1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 for i, j in pairs)
    return s / len(pairs)


def test_correlations_are_on_worseness(tmp_path):
    a = [0.3, 0.1, 0.9, 0.4, 0.7]
    b = [2.0, 5.0, 1.0, 4.0, 3.0]  # higher is better: worse-ness is -b
    c = [1.0, 3.0, 2.0, 5.0, 4.0]
    runs = [write_run(tmp_path, "x", {"t": ("layerif", False, a)}),
            write_run(tmp_path, "y", {"t": ("owl_outlier", True, b), "u": ("htsr_alpha", False, c)})]
    result = compare_scores(runs)
    worse = [a, [-v for v in b], c]
    assert [s.label for s in result.series] == ["x/t (layerif)", "y/t (owl_outlier)",
                                                "y/u (htsr_alpha)"]
    for i in range(3):
        for j in range(3):
            assert result.spearman[i][j] == pytest.approx(spearman_no_ties(worse[i], worse[j]))
            assert result.kendall[i][j] == pytest.approx(kendall_no_ties(worse[i], worse[j]))


def test_constant_vector_has_no_correlation(tmp_path):
    runs = [write_run(tmp_path, "a", {"t": ("uniform", False, [1.0, 1.0, 1.0])}),
            write_run(tmp_path, "b", {"t": ("random", False, [0.2, 0.5, 0.1])})]
    result = compare_scores(runs)
    assert math.isnan(result.spearman[0][1]) and math.isnan(result.kendall[1][0])
    assert result.to_json()["spearman"][0][1] is None


def test_mismatched_layer_counts_are_refused(tmp_path):
    runs = [write_run(tmp_path, "a", {"t": ("random", False, [0.1, 0.2])}),
            write_run(tmp_path, "b", {"t": ("random", False, [0.1, 0.2, 0.3])})]
    with pytest.raises(DataError, match="same model"):
        compare_scores(runs)


def test_missing_scores_json_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no scores.json"):
        compare_scores([tmp_path, tmp_path])


def test_plot_is_a_png(tmp_path):
    runs = [write_run(tmp_path, "a", {"t": ("random", False, [0.1, 0.2, 0.7])}),
            write_run(tmp_path, "b", {"t": ("uniform", False, [1.0, 1.0, 1.0])})]
    path = plot_comparison(compare_scores(runs), tmp_path / "plots" / "cmp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_tables_and_writes_plot_and_json(tmp_path):
    a = write_run(tmp_path, "a", {"t": ("htsr_alpha", False, [3.0, 2.0, 4.0, 1.0])})
    b = write_run(tmp_path, "b", {"t": ("block_influence", True, [0.2, 0.3, 0.1, 0.4])})
    out = tmp_path / "out" / "cmp.png"
    res = CliRunner().invoke(app, ["compare-scores", str(a), str(b), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "Spearman" in res.output and "Kendall" in res.output
    assert out.is_file()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["spearman"][0][1] == pytest.approx(1.0)  # same order of worse-ness


def test_cli_bad_run_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["compare-scores", str(tmp_path / "nope"), str(tmp_path)])
    assert res.exit_code == 2
    assert "scores.json" in res.output
