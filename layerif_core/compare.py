"""Comparing layer scores across runs (``layerif compare-scores``).

Every task of every run's ``scores.json`` is one score vector. Vectors are compared *oriented by
worse-ness* (``−values`` when the scorer states ``higher_is_better``, as allocators read them), so a
positive correlation means two scorers agree on which layers are worse trained, whatever their sign
conventions. Spearman's ρ and Kendall's τ-b come from :mod:`scipy.stats`; a constant vector (the
``uniform`` control) has no rank correlation and gets NaN.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerif_core.artifacts import atomic_path, read_scores
from layerif_core.errors import DataError
from layerif_core.plotting import save_figure
from layerif_core.results import LayerScores


@dataclass
class ScoreSeries:
    """One score vector: a task of a run, with the scorer that made it."""

    label: str
    source: str
    task: str
    scores: LayerScores

    @property
    def worseness(self) -> list[float]:
        return [float(x) for x in self.scores.worseness().tolist()]


@dataclass
class Comparison:
    """Pairwise rank correlations between score vectors (``[K, K]`` nested lists)."""

    series: list[ScoreSeries]
    spearman: list[list[float]]
    kendall: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        def clean(m: list[list[float]]) -> list[list[float | None]]:
            return [[None if math.isnan(x) else x for x in row] for row in m]

        return {
            "orientation": "worseness (larger = worse trained)",
            "series": [{"label": s.label, "source": s.source, "task": s.task,
                        "scorer": s.scores.scorer, "higher_is_better": s.scores.higher_is_better,
                        "values": [float(x) for x in s.scores.values.tolist()]} for s in self.series],
            "spearman": clean(self.spearman),
            "kendall": clean(self.kendall),
        }


def read_series(path: str | Path) -> list[ScoreSeries]:
    """The score vectors of a run directory (or of a ``scores.json`` file), one per task."""
    path = Path(path)
    file = path / "scores.json" if path.is_dir() else path
    return [ScoreSeries(f"{file.parent.name}/{task} ({s.scorer})", str(file), task, s)
            for task, s in read_scores(path).items()]


def pairwise_correlations(series: list[ScoreSeries], fn) -> list[list[float]]:
    """``fn(a, b).statistic`` (e.g. ``scipy.stats.spearmanr``) for every pair of worse-ness vectors."""
    vectors = [s.worseness for s in series]
    out = []
    for a in vectors:
        row = []
        for b in vectors:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
                row.append(float(fn(a, b).statistic))
        out.append(row)
    return out


def compare_scores(paths: list[str | Path]) -> Comparison:
    """Spearman and Kendall correlations between every pair of score vectors in ``paths``."""
    from scipy.stats import kendalltau, spearmanr

    series = [s for p in paths for s in read_series(p)]
    if len(series) < 2:
        raise DataError("compare-scores needs at least two score vectors; pass two runs (or one run "
                        "with two tasks).")
    lengths = {len(s.scores.values) for s in series}
    if len(lengths) > 1:
        sizes = ", ".join(f"{s.label}: {len(s.scores.values)}" for s in series)
        raise DataError(f"score vectors have different numbers of layers ({sizes}); compare runs "
                        "of the same model.")
    seen: dict[str, int] = {}
    for s in series:  # two runs with the same directory name: make labels unique
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label} #{seen[s.label]}"
    return Comparison(series, pairwise_correlations(series, spearmanr),
                      pairwise_correlations(series, kendalltau))


def normalized_worseness(values: list[float]) -> list[float]:
    """Min-max to [0, 1] (1 = worst layer); a constant vector maps to 0.5."""
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        return [0.5] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Every vector's min-max normalised worse-ness over the layer index, one line each (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for s in comparison.series:
        y = normalized_worseness(s.worseness)
        ax.plot(range(len(y)), y, marker="o", markersize=3, label=s.label)
    ax.set_xlabel("layer")
    ax.set_ylabel("worse-ness (min-max; 1 = worst trained)")
    ax.set_title("Layer scores compared")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def write_comparison(comparison: Comparison, path: str | Path) -> Path:
    """The correlations and vectors as JSON (atomic write)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(comparison.to_json(), indent=2) + "\n")
    return path
