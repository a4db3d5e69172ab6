"""The report of a study, rebuilt from whatever cells exist (architecture §9).

- ``results.csv``: tidy, one row per finished cell × metric, every grid axis a column;
- ``summary.json`` / ``summary.md``: per arm and grid point the mean over seeds ± the half-width of
  the 95% confidence interval of the mean, ``t_{0.975, n−1} · s / √n`` (s the sample standard
  deviation, n the seeds); the paired difference to the control arm on the same seed (arm − control)
  with the p-value of a paired test (paired t, ``scipy.stats.ttest_rel``, or Wilcoxon signed-rank,
  ``scipy.stats.wilcoxon``; two-sided); wins / ties / losses over the seeds; the best mean of every
  column in bold; the power of each comparison: the minimum detectable effect at 80% power from the
  observed spread of the paired differences, and the seeds a metric's ``target_effect`` needs
  (:mod:`layerif_core.study.power`);
- ``plots/``: each metric against each grid axis (one line per arm, 95% CI band), the per-layer
  allocation of every arm (heat map), the arms' layer score profiles;
- ``report.html``: one self-contained page (plots embedded as PNG) with the tables, the study
  config and the provenance.

No torch import: a report of a finished study takes a second.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerif_core.errors import closest
from layerif_core.study.config import MetricSpec, StudyConfig, StudyError
from layerif_core.study.power import MAX_SEEDS, paired_power


@dataclass
class StudyData:
    """A study directory read back: its config, cells and dense reference."""

    directory: Path
    study: StudyConfig
    base: dict[str, Any]
    cells: list[dict[str, Any]]
    dense: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c.get("status") == "ok"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c.get("status") != "ok"]

    @property
    def axes(self) -> list[str]:
        return self.study.axes

    def points(self) -> list[tuple]:
        return [tuple(p[a] for a in self.axes) for p in self.study.points()]


def read_study(directory: str | Path) -> StudyData:
    directory = Path(directory)
    meta_path = directory / "study.json"
    if not meta_path.is_file():
        raise StudyError(f"'{directory}' is not a study directory (no study.json); run "
                         "`layerif study STUDY.yaml` first, or point to <output_dir>/<name>.")
    meta = json.loads(meta_path.read_text())
    study = StudyConfig.model_validate(meta["study"])
    cells = []
    for path in sorted((directory / "cells").glob("*.json")):
        try:
            cells.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue  # a cell being written by another shard
    dense: dict[str, float] = {}
    for path in sorted((directory / "shared" / "dense").glob("*.json")):
        dense.update(json.loads(path.read_text()).get("metrics", {}))
    return StudyData(directory, study, meta.get("base", {}), cells, dense)


# --- statistics --------------------------------------------------------------------------------

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
    import warnings

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


def _tie(a: float, c: float) -> bool:
    return abs(a - c) <= 1e-9 * max(1.0, abs(c))


def metric_specs(data: StudyData) -> list[MetricSpec]:
    """The metrics of the report: the study's list (each reported by some cell), else all."""
    reported = sorted({m for c in data.ok for m in c.get("metrics", {})})
    if not data.study.metrics:
        return [MetricSpec(name=m) for m in reported]
    for spec in data.study.metrics:
        if spec.name not in reported:
            raise StudyError(f"metric '{spec.name}' was reported by no cell{closest(spec.name, reported)}; "
                             f"the cells report: {', '.join(reported) or 'nothing yet'}.")
    return list(data.study.metrics)


def _point(cell: dict[str, Any], axes: list[str]) -> tuple:
    return tuple(json.dumps(cell["grid"].get(a), sort_keys=True) for a in axes)


def summarize(data: StudyData) -> dict[str, Any]:
    """Every number of the summary (also written as ``summary.json``)."""
    axes, arms = data.axes, [a.label for a in data.study.arms]
    control = data.study.control.label
    by: dict[tuple, dict[int, float]] = defaultdict(dict)  # (metric, arm, point) -> seed -> value
    for cell in data.ok:
        for metric, value in cell.get("metrics", {}).items():
            by[(metric, cell["arm"], _point(cell, axes))][cell["seed"]] = float(value)
    out: dict[str, Any] = {"control": control, "test": data.study.test, "metrics": []}
    for spec in metric_specs(data):
        goal = spec.goal()
        entry: dict[str, Any] = {"name": spec.name, "better": goal, "dense": data.dense.get(spec.name),
                                 "target_effect": spec.target_effect, "points": []}
        for values in data.points():
            point = tuple(json.dumps(v, sort_keys=True) for v in values)
            rows = []
            ctrl = by.get((spec.name, control, point), {})
            for arm in arms:
                seeds = by.get((spec.name, arm, point), {})
                mean, ci, n = mean_ci([seeds[s] for s in sorted(seeds)])
                row: dict[str, Any] = {"arm": arm, "mean": mean, "ci95": ci, "n": n,
                                       "values": {str(s): seeds[s] for s in sorted(seeds)}}
                if arm != control:
                    common = sorted(set(seeds) & set(ctrl))
                    a, c = [seeds[s] for s in common], [ctrl[s] for s in common]
                    diffs = [x - y for x, y in zip(a, c, strict=True)]
                    sign = {"lower": -1, "higher": 1, "none": 0}[goal]
                    ties = [_tie(x, y) for x, y in zip(a, c, strict=True)]
                    gains = [sign * d for d in diffs]
                    row["paired"] = {
                        "n": len(common), "diff_mean": _mean_diff(a, c),
                        "p": paired_p(a, c, data.study.test),
                        "wins": sum(1 for g, t in zip(gains, ties, strict=True) if not t and g > 0),
                        "ties": sum(ties),
                        "losses": sum(1 for g, t in zip(gains, ties, strict=True) if not t and g < 0),
                        "power": paired_power(diffs, data.study.test, spec.target_effect).to_json()}
                rows.append(row)
            finite = [r for r in rows if r["n"]]
            if finite and goal != "none":
                pick = min if goal == "lower" else max
                best = pick(r["mean"] for r in finite)
                for r in rows:
                    r["best"] = bool(r["n"]) and r["mean"] == best
            entry["points"].append({"grid": dict(zip(axes, values, strict=True)), "rows": rows})
        out["metrics"].append(entry)
    return out


# --- tables ------------------------------------------------------------------------------------

def _mean_diff(a: list[float], c: list[float]) -> float:
    """Mean of ``a - c``, 0 where it is rounding (equal means of different values, e.g. accuracies)."""
    if not a:
        return math.nan
    diff = math.fsum(x - y for x, y in zip(a, c, strict=True)) / len(a)
    return 0.0 if abs(diff) <= 1e-12 * max(map(abs, a + c)) else diff


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4g}"


def point_label(grid: dict[str, Any], axes: list[str]) -> str:
    shorts = [a.split(".")[-1] for a in axes]
    names = shorts if len(set(shorts)) == len(shorts) else axes
    return ", ".join(f"{n}={grid[a]}" for n, a in zip(names, axes, strict=True)) or "all"


def tables(summary: dict[str, Any], axes: list[str]) -> list[dict[str, Any]]:
    """Per metric: a values table and a paired-difference table (header + rows of strings)."""
    out = []
    for m in summary["metrics"]:
        points = m["points"]
        header = ["arm"] + [point_label(p["grid"], axes) for p in points]
        arms = [r["arm"] for r in points[0]["rows"]] if points else []
        values, diffs = [], []
        for i, arm in enumerate(arms):
            label = arm + (" (control)" if arm == summary["control"] else "")
            cells = []
            for p in points:
                r = p["rows"][i]
                text = fmt(r["mean"]) + ("" if math.isnan(r["ci95"]) else f" ± {fmt(r['ci95'])}")
                cells.append(f"**{text}**" if r.get("best") else text)
            values.append([label] + cells)
            if arm == summary["control"]:
                continue
            dcells, total = [], [0, 0, 0]
            for p in points:
                d = p["rows"][i]["paired"]
                total = [total[0] + d["wins"], total[1] + d["ties"], total[2] + d["losses"]]
                wtl = f"; {d['wins']}/{d['ties']}/{d['losses']}" if m["better"] != "none" else ""
                dcells.append(f"{fmt(d['diff_mean'])} (p={fmt(d['p'])}{wtl})")
            overall = f"{total[0]}/{total[1]}/{total[2]}" if m["better"] != "none" else "–"
            diffs.append([arm] + dcells + [overall])
        power = power_table(m, summary, axes) if m["better"] != "none" else None
        out.append({"metric": m["name"], "better": m["better"], "dense": m["dense"],
                    "values": (header, values), "diffs": (header + ["all W/T/L"], diffs),
                    "power": power})
    return out


FOOTNOTE_MARKS = "¹²³⁴"


def power_table(m: dict[str, Any], summary: dict[str, Any], axes: list[str]) -> dict[str, Any] | None:
    """The power of every comparison with the control of metric ``m``: one row per arm and grid
    point, with its MDE at 80% power and, when the metric has a target effect, the seeds it needs;
    a missing figure is "n/a" with a footnote saying why."""
    target = m.get("target_effect")
    header = (["arm"] + (["grid point"] if axes else []) + ["pairs", "SD of differences", "MDE (80%)"]
              + (["seeds for target"] if target else []))
    notes: list[str] = []

    def missing(note: str) -> str:
        if note not in notes:
            notes.append(note)
        return "n/a" + FOOTNOTE_MARKS[notes.index(note)]

    rows = []
    for p in m["points"]:
        for r in p["rows"]:
            if r["arm"] == summary["control"]:
                continue
            pw = r["paired"]["power"]
            row = [r["arm"]] + ([point_label(p["grid"], axes)] if axes else [])
            row += [str(pw["n"]), fmt(pw["sd"]),
                    fmt(pw["mde"]) if pw["mde"] is not None else missing(pw["note"])]
            if target:
                row.append(str(pw["seeds_for_target"]) if pw["seeds_for_target"] is not None
                           else f"> {MAX_SEEDS}" if pw["seeds_over_cap"] else missing(pw["note"]))
            rows.append(row)
    if not rows:
        return None
    return {"header": header, "rows": rows, "explain": power_sentence(summary["test"], target),
            "notes": [f"{FOOTNOTE_MARKS[i]} {note}." for i, note in enumerate(notes)]}


def power_sentence(test: str, target: float | None) -> str:
    """What the power columns mean, in plain words."""
    name = "paired t-test" if test == "t" else "Wilcoxon signed-rank test"
    text = (f"MDE (80%) is the smallest true difference to the control, either way, that a {name} "
            "over this many paired seeds would find significant (two-sided p < 0.05) in 80% of "
            "repeats of the study, given the spread of the paired differences seen here (SD), so a "
            "smaller difference that came out non-significant may be real but needs more seeds")
    if test == "wilcoxon":
        text += (" (for the Wilcoxon test an approximation through its efficiency relative to the "
                 "t-test, optimistic below about 10 pairs)")
    if target:
        text += (f"; seeds for target is how many seeds the same test needs to detect a difference "
                 f"of {fmt(target)} with 80% power at that spread")
    return text + "."


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def cell_hardware(data: StudyData) -> dict[str, int]:
    """How many finished cells ran on each processor (``versions``' cpu, its vector instruction
    set and GPU); cells whose record does not say are counted as "not recorded"."""
    counts: dict[str, int] = {}
    for c in data.ok:
        v = c.get("versions") or {}
        kind = f"{v['cpu']} ({v.get('cpu_capability', '?')})" if v.get("cpu") else "not recorded"
        if v.get("gpu"):
            kind += f" + {v['gpu']}"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def hardware_line(data: StudyData) -> list[str]:
    """summary.md's hardware line; with more than one processor, what that means for comparisons."""
    counts = cell_hardware(data)
    if not counts:
        return []
    line = "Hardware: " + "; ".join(f"{k}, {n} cell{'s' * (n != 1)}" for k, n in counts.items()) + "."
    if len([k for k in counts if k != "not recorded"]) > 1:
        line += (" Processors round floating-point sums differently, and a result that follows "
                 "near-ties (a pruning mask) can move on a rerun on another one: compare arms whose "
                 "cells ran on the same hardware, or rerun the others there.")
    return [line, ""]


def markdown(data: StudyData, summary: dict[str, Any]) -> str:
    s = data.study
    n_cells = len(s.arms) * len(data.points()) * len(s.seeds)
    test = "paired t-test (scipy.stats.ttest_rel)" if s.test == "t" else \
        "Wilcoxon signed-rank test (scipy.stats.wilcoxon)"
    lines = [f"# Study `{s.name}`", "",
             f"{len(data.ok)} of {n_cells} cells finished, {len(data.failed)} failed; "
             f"{len(s.arms)} arms × {len(data.points())} grid points × {len(s.seeds)} seeds "
             f"(seeds {', '.join(map(str, s.seeds))}). Control: **{summary['control']}**.", "",
             "Values: mean over seeds ± half-width of the 95% confidence interval of the mean "
             "(t distribution); the best mean of each column in bold. Differences: arm − control on "
             f"the same seed, mean over seeds, two-sided p-value of a {test}, and wins/ties/losses "
             "over the seeds (a win is better in the metric's direction).", ""]
    lines += hardware_line(data)
    for t in tables(summary, data.axes):
        goal = "a measurement" if t["better"] == "none" else f"{t['better']} is better"
        lines += [f"## {t['metric']} ({goal})", ""]
        if t["dense"] is not None:
            lines += [f"Unmodified model: {fmt(t['dense'])}.", ""]
        lines += _md_table(*t["values"]) + [""]
        if t["diffs"][1]:
            lines += ["Paired difference to the control:", ""] + _md_table(*t["diffs"]) + [""]
        if t["power"]:
            pw = t["power"]
            lines += ["Power of the paired comparison:", ""] + _md_table(pw["header"], pw["rows"])
            lines += ["", pw["explain"], ""] + [f"{n}  " for n in pw["notes"]] + ([""] if pw["notes"] else [])
    if data.failed:
        lines += ["## Failed cells", ""]
        lines += [f"- `{c['id']}`: {c['error']['type']}: {c['error']['message'].splitlines()[0]}"
                  for c in data.failed]
        lines.append("")
    return "\n".join(lines)


def write_csv(data: StudyData, path: Path, metrics: list[str]) -> None:
    axes = data.axes
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "arm", "control", *axes, "seed", "metric", "value"])
        for c in sorted(data.ok, key=lambda c: c["id"]):
            for metric in metrics:
                if metric in c.get("metrics", {}):
                    w.writerow([c["id"], c["arm"], c.get("control", False),
                                *(json.dumps(c["grid"].get(a)) if isinstance(c["grid"].get(a), (list, dict))
                                  else c["grid"].get(a) for a in axes),
                                c["seed"], metric, repr(float(c["metrics"][metric]))])


# --- plots -------------------------------------------------------------------------------------

def _slug(text: str) -> str:
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
            fig, axs = plt.subplots(1, n, figsize=(4.2 * n + 1, 3.6), squeeze=False)
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
                    line, = ax.plot(xs, mean, "o-", label=arm, lw=1.5, ms=4)
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
            axs[0][-1].legend(fontsize=7, loc="best")
            goal = "" if m["better"] == "none" else f"{m['better']} is better; "
            fig.suptitle(f"{m['name']} ({goal}mean ± 95% CI over seeds)", fontsize=10)
            paths.append(_save(fig, out / f"{_slug(m['name'])}__{_slug(axis)}.png"))
    return paths


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` and free it."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_arm(data: StudyData, key: str) -> dict[str, dict[str, list[list[float]]]]:
    """arm -> grid point label -> list of vectors (one per seed) of ``cell[key]['values']``."""
    out: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for c in data.ok:
        vec = (c.get(key) or {}).get("values")
        if vec:
            out[c["arm"]][point_label(c["grid"], data.axes)].append([float(v) for v in vec])
    return out


def plot_allocations(data: StudyData, out: Path) -> Path | None:
    """Per-layer allocation (mean over seeds) of every arm: rows = grid points, columns = layers."""
    per_arm = _per_arm(data, "allocation")
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
            s = c.get("scores")
            if c["arm"] != arm or not s or not s.get("values"):
                continue
            w = [-v if s["higher_is_better"] else v for v in s["values"]]
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


def influence_mass(data: StudyData) -> list[dict[str, Any]]:
    """Per influence matrix the LayerIF arms scored with (arms that share one, e.g. +VE, TOP-25% and
    ALL, share an entry): the arms, and the helpful and harmful mass per layer
    ``Σ_i max(±I[l, i], 0)`` as the mean over its seeds' matrices."""
    by_arm: dict[str, dict[str, tuple[list[float], list[float]]]] = {}  # arm -> matrix -> masses
    for c in data.ok:
        details = (c.get("scores") or {}).get("details") or {}
        if "helpful_mass" in details:
            matrix = details.get("influence_fingerprint") or f"seed {c['seed']}"
            by_arm.setdefault(c["arm"], {})[matrix] = (details["helpful_mass"], details["harmful_mass"])
    panels: dict[frozenset, dict[str, Any]] = {}
    for arm, matrices in by_arm.items():
        runs = list(matrices.values())
        panel = panels.setdefault(frozenset(matrices), {
            "arms": [], "matrices": len(runs),
            "helpful": [sum(col) / len(col) for col in zip(*(r[0] for r in runs), strict=True)],
            "harmful": [sum(col) / len(col) for col in zip(*(r[1] for r in runs), strict=True)]})
        panel["arms"].append(arm)
    return list(panels.values())


def plot_influence_mass(data: StudyData, out: Path) -> Path | None:
    """:func:`influence_mass` as bars per layer: helpful up, harmful down, one panel per matrix."""
    panels = influence_mass(data)
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


def curve_cells(data: StudyData, name: str) -> tuple[int, list[dict[str, Any]]]:
    """The seed and the cells whose curve ``name`` the report plots: those at the first grid point
    and seed (in the study's order) at which a cell recorded it (a study resumed seed by seed, or
    cells restored without curves, may lack it at the first seed)."""
    points = [tuple(json.dumps(v, sort_keys=True) for v in p) for p in data.points()]
    keyed = []
    for c in data.ok:
        point = _point(c, data.axes)
        if (c.get("curves") or {}).get(name) and point in points and c["seed"] in data.study.seeds:
            keyed.append(((points.index(point), data.study.seeds.index(c["seed"])), c))
    if not keyed:
        return data.study.seeds[0], []
    first = min(key for key, _ in keyed)
    return data.study.seeds[first[1]], [c for key, c in keyed if key == first]


def plot_curves(data: StudyData, out: Path) -> list[Path]:
    """Each curve the cells recorded (e.g. the LoRA-MoE validation loss against the step), one line
    per arm, at one grid point and seed (:func:`curve_cells`): did training converge?"""
    names = sorted({name for c in data.ok for name in (c.get("curves") or {})})
    paths = []
    for name in names:
        seed, cells = curve_cells(data, name)
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for arm in (a.label for a in data.study.arms):
            for c in cells:
                if c["arm"] == arm:
                    curve = c["curves"][name]
                    ax.plot([p[0] for p in curve], [p[1] for p in curve], "o-", ms=3, label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(f"{name} during the application (seed {seed})", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / f"curve_{_slug(name)}.png"))
    return paths


# --- html --------------------------------------------------------------------------------------

def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        bold = text.startswith("**") and text.endswith("**")
        inner = html.escape(text.strip("*") if bold else text)
        return f"<{tag}>{'<b>' + inner + '</b>' if bold else inner}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance(data: StudyData) -> dict[str, Any]:
    versions = next((c.get("versions") for c in data.cells if c.get("versions")), {})
    seconds = sum(c.get("seconds", 0) for c in data.cells)
    return {"hardware": cell_hardware(data), "versions": versions,
            "cells": len(data.cells), "cell_seconds_total": round(seconds, 1),
            "first_finished": min((c.get("finished", "") for c in data.cells), default=""),
            "last_finished": max((c.get("finished", "") for c in data.cells), default="")}


def write_html(data: StudyData, summary: dict[str, Any], plots: list[Path], path: Path) -> None:
    import yaml

    parts = [f"<h1>Study <code>{html.escape(data.study.name)}</code></h1>",
             f"<p>{len(data.ok)} cells finished, {len(data.failed)} failed. Control: "
             f"<b>{html.escape(summary['control'])}</b>. Values are means over seeds ± the 95% CI "
             "half-width; differences are arm − control on the same seed with a paired "
             f"{'t-test' if data.study.test == 't' else 'Wilcoxon signed-rank test'} and W/T/L.</p>"]
    for t in tables(summary, data.axes):
        goal = "a measurement" if t["better"] == "none" else f"{t['better']} is better"
        parts.append(f"<h2>{html.escape(t['metric'])} ({goal})</h2>")
        if t["dense"] is not None:
            parts.append(f"<p>Unmodified model: {fmt(t['dense'])}</p>")
        parts.append(_html_table(*t["values"]))
        if t["diffs"][1]:
            parts.append("<p>Paired difference to the control:</p>" + _html_table(*t["diffs"]))
        if t["power"]:
            pw = t["power"]
            parts.append("<p>Power of the paired comparison:</p>" + _html_table(pw["header"], pw["rows"])
                         + f"<p>{html.escape(pw['explain'])}</p>"
                         + "".join(f"<p><small>{html.escape(n)}</small></p>" for n in pw["notes"]))
    parts.append("<h2>Plots</h2>")
    for p in plots:
        b64 = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(p.name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
    if data.failed:
        parts.append("<h2>Failed cells</h2><ul>" + "".join(
            f"<li><code>{html.escape(c['id'])}</code>: {html.escape(c['error']['type'])}: "
            f"{html.escape(c['error']['message'].splitlines()[0] if c['error']['message'] else '')}</li>"
            for c in data.failed) + "</ul>")
    config = yaml.safe_dump({"study": data.study.model_dump(mode="json", exclude={"base"}),
                             "base": data.base}, sort_keys=False)
    parts.append(f"<h2>Study config</h2><pre>{html.escape(config)}</pre>")
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(_provenance(data), indent=2))
                 + "</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}"
             "img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Study "
            f"{html.escape(data.study.name)}</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    path.write_text(page)


def _no_nan(value: Any) -> Any:
    """``value`` with NaN (an undefined CI or p-value) as ``None``: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


# --- entry point -------------------------------------------------------------------------------

def build_report(directory: str | Path) -> dict[str, Path]:
    """Write results.csv, summary.json, summary.md, plots/ and report.html into ``directory``."""
    data = read_study(directory)
    if not data.cells:
        raise StudyError(f"'{directory}' holds no finished cell yet; run the study first.")
    summary = summarize(data)  # raises on a metric no cell reported, before anything is written
    plots_dir = data.directory / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = plot_metrics(data, summary, plots_dir) if data.ok else []
    plots += [p for p in (plot_allocations(data, plots_dir), plot_scores(data, plots_dir),
                          plot_influence_mass(data, plots_dir)) if p]
    plots += plot_curves(data, plots_dir)
    out = {}
    for name, write in (
        ("results.csv", lambda p: write_csv(data, p, [m["name"] for m in summary["metrics"]])),
        ("summary.json", lambda p: p.write_text(json.dumps(_no_nan(summary), indent=2) + "\n")),
        ("summary.md", lambda p: p.write_text(markdown(data, summary))),
        ("report.html", lambda p: write_html(data, summary, plots, p)),
    ):
        target = data.directory / name
        tmp = target.with_name(f".{name}.tmp")
        write(tmp)
        os.replace(tmp, target)
        out[name] = target
    return out
