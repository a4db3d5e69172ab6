"""The report of a study, rebuilt from whatever cells exist (architecture §9).

- ``results.csv``: tidy, one row per finished cell × metric, every grid axis a column;
- ``summary.json`` / ``summary.md``: per arm and grid point the mean over seeds ± the half-width of
  the 95% confidence interval of the mean, ``t_{0.975, n−1} · s / √n`` (s the sample standard
  deviation, n the seeds); the paired difference to the control arm on the same seed (arm − control)
  with its 95% interval and the p-value of a paired test (paired t, ``scipy.stats.ttest_rel``, or
  Wilcoxon signed-rank, ``scipy.stats.wilcoxon``; two-sided); wins / ties / losses over the seeds;
  the best mean of every column in bold; the power of each comparison: the minimum detectable
  effect at 80% power from the observed spread of the paired differences, and the seeds a metric's
  ``target_effect`` needs (:mod:`layerif_core.study.stats`, :mod:`layerif_core.study.power`);
- ``plots/``: each metric against each grid axis (one line per arm, 95% CI band), each arm's paired
  difference to the control per grid point with its interval, the per-layer allocation of every
  arm (heat map), the arms' layer score profiles, the influence mass, the application's curves
  (:mod:`layerif_core.study.plots`);
- ``report.html``: ``summary.md`` rendered to HTML, the plots embedded as PNG, the study config and
  the provenance: one self-contained page (:mod:`layerif_core.study.render`).

This module reads the study directory, picks what the plots show and writes the files. No torch
import: a report of a finished study takes a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from layerif_core.atomic import atomic_path
from layerif_core.study import plots as draw
from layerif_core.study.config import StudyConfig, StudyError
from layerif_core.study.hardware import check_report
from layerif_core.study.records import CellRecord, StudyData, dense_dir, point_key
from layerif_core.study.render import cell_hardware, markdown, write_csv, write_html
from layerif_core.study.stats import summarize


def read_study(directory: str | Path) -> StudyData:
    """The study in ``directory``: its config (``study.json``), cell records and dense metrics."""
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
            found = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # a cell being written by another shard
        cells.append(CellRecord.from_json(found))
    dense: dict[str, float] = {}
    for path in sorted(dense_dir(directory).glob("*.json")):
        dense.update(json.loads(path.read_text()).get("metrics", {}))
    return StudyData(directory, study, meta.get("base", {}), cells, dense)


def influence_mass(data: StudyData) -> list[dict[str, Any]]:
    """Per influence matrix the LayerIF arms scored with (arms that share one, e.g. +VE, TOP-25% and
    ALL, share an entry): the arms, and the helpful and harmful mass per layer
    ``Σ_i max(±I[l, i], 0)`` as the mean over its seeds' matrices."""
    by_arm: dict[str, dict[str, tuple[list[float], list[float]]]] = {}  # arm -> matrix -> masses
    for c in data.ok:
        details = c.scores.details if c.scores is not None else {}
        if "helpful_mass" in details:
            matrix = details.get("influence_fingerprint") or f"seed {c.seed}"
            by_arm.setdefault(c.arm, {})[matrix] = (details["helpful_mass"], details["harmful_mass"])
    panels: dict[frozenset, dict[str, Any]] = {}
    for arm, matrices in by_arm.items():
        runs = list(matrices.values())
        panel = panels.setdefault(frozenset(matrices), {
            "arms": [], "matrices": len(runs),
            "helpful": [sum(col) / len(col) for col in zip(*(r[0] for r in runs), strict=True)],
            "harmful": [sum(col) / len(col) for col in zip(*(r[1] for r in runs), strict=True)]})
        panel["arms"].append(arm)
    return list(panels.values())


def curve_cells(data: StudyData, name: str) -> list[CellRecord]:
    """The cells whose curve ``name`` the report plots, one per arm that recorded it (in the study's
    arm order): the arm's cell at the first grid point and seed (in the study's order) at which it
    recorded the curve. Each arm looks for its own: a failed cell, or cells restored without
    curves, at the first seed of one arm do not hide that arm's curve at a later seed."""
    points = [point_key(dict(zip(data.axes, p, strict=True)), data.axes) for p in data.points()]
    first: dict[str, tuple[tuple[int, int], CellRecord]] = {}
    for c in data.ok:
        point = point_key(c.grid, data.axes)
        if not (c.curves or {}).get(name) or point not in points or c.seed not in data.study.seeds:
            continue
        key = (points.index(point), data.study.seeds.index(c.seed))
        if c.arm not in first or key < first[c.arm][0]:
            first[c.arm] = (key, c)
    return [first[a.label][1] for a in data.study.arms if a.label in first]


def write_plots(data: StudyData, summary: dict[str, Any]) -> list[Path]:
    """Every plot the cells allow, into ``plots/``, in the order report.html shows them."""
    out = data.directory / "plots"
    out.mkdir(exist_ok=True)
    paths = draw.plot_metrics(data, summary, out) if data.ok else []
    paths += [p for p in (draw.plot_paired_differences(summary, data.axes, out),
                          draw.plot_allocations(data, out), draw.plot_scores(data, out),
                          draw.plot_influence_mass(influence_mass(data), out)) if p]
    names = sorted({name for c in data.ok for name in (c.curves or {})})
    curves = {name: curve_cells(data, name) for name in names}
    return paths + draw.plot_curves(curves, len(data.study.arms), out)


def _no_nan(value: Any) -> Any:
    """``value`` with NaN (an undefined CI or p-value) as ``None``: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def build_report(directory: str | Path, allow_mixed_hardware: bool = False) -> dict[str, Path]:
    """Write results.csv, summary.json, summary.md, plots/ and report.html into ``directory``.
    Cells of several processors are refused (:mod:`layerif_core.study.hardware`) unless
    ``allow_mixed_hardware``; the summary then counts the cells per processor and warns."""
    data = read_study(directory)
    if not data.cells:
        raise StudyError(f"'{directory}' holds no finished cell yet; run the study first.")
    check_report(data.directory, cell_hardware(data), allow_mixed_hardware)
    summary = summarize(data)  # raises on a metric no cell reported, before anything is written
    plots = write_plots(data, summary)
    summary_md = markdown(data, summary)
    out = {}
    for name, write in (
        ("results.csv", lambda p: write_csv(data, p, [m["name"] for m in summary["metrics"]])),
        ("summary.json", lambda p: p.write_text(json.dumps(_no_nan(summary), indent=2) + "\n")),
        ("summary.md", lambda p: p.write_text(summary_md)),
        ("report.html", lambda p: write_html(data, summary_md, plots, p)),
    ):
        target = data.directory / name
        with atomic_path(target) as tmp:
            write(tmp)
        out[name] = target
    return out
