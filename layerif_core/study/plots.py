"""The study's plots (``plots/*.png``): each metric against each grid axis, each arm's paired
difference to the control with its interval, the per-layer allocations, the layer score profiles,
the influence mass per layer and the curves the application recorded. Drawing only: the numbers
come from the summary (:mod:`layerif_core.study.stats`) and the cell records.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerif_core.study.records import CellRecord, StudyData, point_label


def slug(text: str) -> str:
    """A file name part: runs of anything but letters and digits as one ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wants_log_scale(values: list[float]) -> bool:
    """Positive values spanning more than a factor 10 (perplexity from 50% to 70% sparsity): on a
    linear axis the small ones would sit on one line."""
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def plot_metrics(data: StudyData, summary: dict[str, Any], out: Path) -> list[Path]:
    """Each metric against each grid axis: one line per arm with its 95% CI band; one panel per
    combination of the other axes' values."""
    plt = _plt()
    paths = []
    axes = data.axes or ["(none)"]
    for m in summary["metrics"]:
        for axis in axes:
            others = [a for a in data.axes if a != axis]
            groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
            for p in m["points"]:
                groups[tuple(json.dumps(p["grid"].get(o)) for o in others)].append(p)
            n = len(groups)
            # the legend beside the last panel, not over the lines: a study compares up to 20+ arms
            height = max(3.6, 0.8 + 0.19 * len(data.study.arms))
            fig, axs = plt.subplots(1, n, figsize=(4.2 * n + 3.5, height), squeeze=False)
            for ax, (key, pts) in zip(axs[0], groups.items(), strict=True):
                xs = list(range(len(pts)))
                labels = [str(p["grid"].get(axis, "")) for p in pts]
                if len(data.study.arms) > 10:  # the default cycle repeats its colours after 10
                    ax.set_prop_cycle(color=plt.cm.tab20.colors)
                shown = []
                for i, arm in enumerate(a.label for a in data.study.arms):
                    mean = [p["rows"][i]["mean"] for p in pts]
                    shown += [v for v in mean if math.isfinite(v)]
                    ci = [0.0 if math.isnan(p["rows"][i]["ci95"]) else p["rows"][i]["ci95"] for p in pts]
                    line, = ax.plot(xs, mean, marker="o", label=arm, lw=1.5, ms=4,
                                    ls=("-", "--")[i // 20 % 2])  # dashed once tab20 comes round
                    ax.fill_between(xs, [a - c for a, c in zip(mean, ci, strict=True)],
                                    [a + c for a, c in zip(mean, ci, strict=True)],
                                    color=line.get_color(), alpha=0.15)
                ax.set_xticks(xs, labels)
                ax.set_xlabel(axis.split(".")[-1])
                ax.set_ylabel(m["name"])
                if wants_log_scale(shown):
                    ax.set_yscale("log")
                    ax.set_ylabel(f"{m['name']} (log scale)")
                if others:
                    ax.set_title(", ".join(f"{o.split('.')[-1]}={json.loads(k)}" for o, k in
                                           zip(others, key, strict=True)), fontsize=9)
                ax.grid(alpha=0.3)
            axs[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            goal = "" if m["better"] == "none" else f"{m['better']} is better; "
            fig.suptitle(f"{m['name']} ({goal}mean ± 95% CI over seeds)", fontsize=10)
            paths.append(_save(fig, out / f"{slug(m['name'])}__{slug(axis)}.png"))
    return paths


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` and free it."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _allocations(data: StudyData) -> dict[str, dict[str, list[list[float]]]]:
    """arm -> grid point label -> the per-layer allocations of its seeds."""
    out: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for c in data.ok:
        if c.allocation is not None and c.allocation.values:
            out[c.arm][point_label(c.grid, data.axes)].append(c.allocation.values)
    return out


def plot_allocations(data: StudyData, out: Path) -> Path | None:
    """Per-layer allocation (mean over seeds) of every arm: rows = grid points, columns = layers."""
    per_arm = _allocations(data)
    if not per_arm:
        return None
    plt = _plt()
    arms = [a.label for a in data.study.arms if a.label in per_arm]
    n_rows = max(len(per_arm[a]) for a in arms)
    fig, axs = plt.subplots(len(arms), 1, figsize=(8, 0.8 + len(arms) * (0.7 + 0.3 * n_rows)),
                            squeeze=False, sharex=True, constrained_layout=True)
    values = [v for a in arms for vs in per_arm[a].values() for vec in vs for v in vec]
    lo, hi = min(values), max(values)
    for ax, arm in zip(axs[:, 0], arms, strict=True):
        labels = list(per_arm[arm])
        matrix = [[sum(col) / len(col) for col in zip(*per_arm[arm][lab], strict=True)] for lab in labels]
        im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(arm, fontsize=9, loc="left")
    axs[-1, 0].set_xlabel("layer", fontsize=8)
    fig.colorbar(im, ax=axs[:, 0].tolist(), shrink=0.8, label="allocation (mean over seeds)")
    return _save(fig, out / "allocation.png", tight=False)


def plot_scores(data: StudyData, out: Path) -> Path | None:
    """Each arm's layer score profile as worse-ness min-maxed to [0, 1] (mean over its cells)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = 0
    for arm in (a.label for a in data.study.arms):
        vecs = []
        for c in data.ok:
            s = c.scores
            if c.arm != arm or s is None or not s.values:
                continue
            w = [-v if s.higher_is_better else v for v in s.values]
            span = max(w) - min(w)
            vecs.append([(v - min(w)) / span if span > 0 else 0.0 for v in w])
        if vecs:
            mean = [sum(col) / len(col) for col in zip(*vecs, strict=True)]
            ax.plot(range(len(mean)), mean, "o-", ms=3, label=arm)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("layer")
    ax.set_ylabel("worse-ness (min-max)")
    ax.set_title("layer score profiles (1 = judged worst trained)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "scores.png")


def plot_influence_mass(panels: list[dict[str, Any]], out: Path) -> Path | None:
    """The influence mass per layer (:func:`layerif_core.study.report.influence_mass`) as bars:
    helpful up, harmful down, one panel per influence matrix."""
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        layers = range(len(panel["helpful"]))
        ax.bar(layers, panel["helpful"], color="tab:green", label="helpful Σ max(I, 0)")
        ax.bar(layers, [-h for h in panel["harmful"]], color="tab:red", label="harmful Σ max(−I, 0)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{', '.join(panel['arms'])} (mean of {panel['matrices']} influence matrices)",
                     fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("layer")
    fig.suptitle("influence mass per layer (helpful up, harmful down)", fontsize=10)
    return _save(fig, out / "influence_mass.png")


BEST_STEP = "train/best_step"  # the step whose weights early stopping kept (LoRA-MoE, LoRA ranks)


def draw_curve(name: str, cells: list[CellRecord], n_arms: int) -> Any:
    """One recorded curve (e.g. the LoRA-MoE validation or held-out loss against the step), one line
    per cell of ``cells`` (one per arm, :func:`layerif_core.study.report.curve_cells`), labelled by
    its arm, and by its seed where the cells come from different seeds (else the title names the
    seed). A star marks the step whose weights early stopping kept (the cell's
    ``train/best_step``), where the curve has that step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cycle = 20 if n_arms > 10 else 10  # the default cycle repeats its colours after 10
    if cycle == 20:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    seeds = {c.seed for c in cells}
    starred = False
    for i, c in enumerate(cells):
        curve = c.curves[name]
        label = c.arm if len(seeds) == 1 else f"{c.arm} (seed {c.seed})"
        line, = ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", ms=3, label=label,
                        ls=("-", "--")[i // cycle % 2])  # dashed once the colours come round again
        best = c.metrics.get(BEST_STEP)
        kept = [p for p in curve if best is not None and p[0] == best]
        if kept:
            ax.plot([kept[0][0]], [kept[0][1]], "*", ms=11, color=line.get_color(), mec="black", mew=0.5)
            starred = True
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    which = f"seed {next(iter(seeds))}" if len(seeds) == 1 else "each arm's first seed that recorded it"
    star = "; ★ the step whose weights were kept" if starred else ""
    ax.set_title(f"{name} during the application ({which}{star})", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return fig


def plot_curves(curves: dict[str, list[CellRecord]], n_arms: int, out: Path) -> list[Path]:
    """:func:`draw_curve` of each curve the cells recorded (``curves``: its name -> one cell per
    arm) as ``curve_<name>.png``. Did training converge?"""
    return [_save(draw_curve(name, cells, n_arms), out / f"curve_{slug(name)}.png")
            for name, cells in curves.items() if cells]


@dataclass
class DifferencePanel:
    """One panel of the paired-difference plot: a metric at a grid point, per arm (not the control)
    the mean paired difference to the control and the half-width of its 95% interval, and whether
    that interval lies wholly on the better (+1) or worse (−1) side of 0, or not (0)."""

    metric: str
    point: str
    better: str
    arms: list[str]
    diffs: list[float]
    ci95: list[float]  # NaN where undefined (one pair)
    verdicts: list[int]


def difference_panels(summary: dict[str, Any], axes: list[str]) -> list[list[DifferencePanel]]:
    """Per metric (a row of panels), per grid point: what :func:`plot_paired_differences` draws,
    read from the summary's paired comparisons (``diff_mean``, ``diff_ci95``)."""
    rows = []
    for m in summary["metrics"]:
        sign = {"lower": -1, "higher": 1, "none": 0}[m["better"]]
        row = []
        for p in m["points"]:
            arms, diffs, cis, verdicts = [], [], [], []
            for r in p["rows"]:
                if r["arm"] == summary["control"] or not r["paired"]["n"]:
                    continue
                d, ci = r["paired"]["diff_mean"], r["paired"]["diff_ci95"]
                whole = not math.isnan(ci) and abs(d) > ci
                arms.append(r["arm"])
                diffs.append(d)
                cis.append(ci)
                verdicts.append(sign * (1 if d > 0 else -1) if whole and d != 0 else 0)
            row.append(DifferencePanel(m["name"], point_label(p["grid"], axes), m["better"], arms, diffs,
                                       cis, verdicts))
        if any(panel.arms for panel in row):
            rows.append(row)
    return rows


VERDICT_COLOURS = {1: "tab:green", -1: "tab:red", 0: "tab:gray"}


def draw_paired_differences(rows: list[list[DifferencePanel]], control: str) -> Any:
    """A forest plot: one row of panels per metric, one panel per grid point with its own scale
    (perplexity differences at 70% sparsity are a hundred times those at 50%), per arm a dot at
    the mean paired difference to the control and a whisker over its 95% interval, a line at 0."""
    plt = _plt()
    arms = list(dict.fromkeys(a for row in rows for panel in row for a in panel.arms))
    n_cols = max(len(row) for row in rows)
    fig, axs = plt.subplots(len(rows), n_cols, squeeze=False, sharey=True,
                            figsize=(2.2 + 3.0 * n_cols, 0.9 + len(rows) * (0.7 + 0.28 * len(arms))))
    for row, line in zip(rows, axs, strict=False):
        for panel, ax in zip(row, line, strict=False):
            for arm, d, ci, verdict in zip(panel.arms, panel.diffs, panel.ci95, panel.verdicts, strict=True):
                ax.errorbar([d], [arms.index(arm)], xerr=None if math.isnan(ci) else [ci], fmt="o", ms=4,
                            capsize=3, color=VERDICT_COLOURS[verdict])
            ax.axvline(0, color="black", lw=0.8)
            ax.margins(x=0.08)
            goal = "" if panel.better == "none" else f"; {panel.better} is better"
            ax.set_title(f"{panel.metric} at {panel.point}", fontsize=8)
            ax.set_xlabel(f"arm − {control}{goal}", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(axis="x", alpha=0.3)
        for ax in line[len(row):]:
            ax.set_visible(False)
    axs[0, 0].set_yticks(range(len(arms)), arms)
    axs[0, 0].invert_yaxis()
    fig.suptitle("paired difference to the control: mean over seeds, 95% CI (green: better, red: worse, "
                 "the interval excluding 0)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_paired_differences(summary: dict[str, Any], axes: list[str], out: Path) -> Path | None:
    """:func:`draw_paired_differences` of the summary as ``paired_differences.png``."""
    rows = difference_panels(summary, axes)
    if not rows:
        return None
    fig = draw_paired_differences(rows, summary["control"])
    return _save(fig, out / "paired_differences.png", tight=False)
