"""The study's summary in words and tables: ``summary.md``, ``results.csv``, and ``report.html``
rendered from the same Markdown through markdown-it-py (CommonMark with its table extension), with the
plots embedded as PNG, the study config and the provenance added: one self-contained page.
"""

from __future__ import annotations

import base64
import copy
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

from layerif_core.study.hardware import count, describe, processor
from layerif_core.study.power import MAX_SEEDS
from layerif_core.study.records import StudyData, point_label


def fmt(x: float | None) -> str:
    """A number of the tables: 4 significant digits; "–" for none (an undefined CI or p-value)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4g}"


def finished_only(summary: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``summary`` without the grid points and arms where no cell has finished (a study in progress),
    and the labels of the arms left out."""
    out = copy.deepcopy(summary)
    ran = {r["arm"] for m in out["metrics"] for p in m["points"] for r in p["rows"] if r["n"]}
    waiting = [r["arm"] for r in (summary["metrics"][0]["points"][0]["rows"]
                                  if summary["metrics"] and summary["metrics"][0]["points"] else [])
               if r["arm"] not in ran]
    for m in out["metrics"]:
        m["points"] = [p for p in m["points"] if any(r["n"] for r in p["rows"])]
        for p in m["points"]:
            p["rows"] = [r for r in p["rows"] if r["arm"] in ran]
            for r in p["rows"]:
                r["versus"] = {ref: v for ref, v in r["versus"].items() if ref in ran}
    return out, waiting


def tables(summary: dict[str, Any], axes: list[str]) -> list[dict[str, Any]]:
    """Per metric: a values table and a paired-difference table (header + rows of strings)."""
    out = []
    for m in summary["metrics"]:
        points = m["points"]
        header = ["arm"] + [point_label(p["grid"], axes) for p in points]
        arms = [r["arm"] for r in points[0]["rows"]] if points else []
        refs = list(dict.fromkeys(ref for p in points[:1] for row in p["rows"] for ref in row["versus"]))
        values, diffs, ranks = [], [], []
        versus: dict[str, list[list[str]]] = {ref: [] for ref in refs}
        for i, arm in enumerate(arms):
            label = arm + (" (control)" if arm == summary["control"] else "")
            cells = []
            for p in points:
                r = p["rows"][i]
                text = fmt(r["mean"]) + ("" if math.isnan(r["ci95"]) else f" ± {fmt(r['ci95'])}")
                cells.append(f"**{text}**" if r.get("best") else text)
            values.append([label] + cells)
            if m["better"] != "none":
                ranks.append([label] + [str(p["rows"][i].get("rank") or "–") for p in points])
            for ref in refs:
                if arm != ref:
                    versus[ref].append([label] + diff_cells([p["rows"][i]["versus"][ref] for p in points],
                                                            m["better"]))
            if arm != summary["control"]:
                diffs.append([arm] + diff_cells([p["rows"][i]["paired"] for p in points], m["better"]))
        power = power_table(m, summary, axes) if m["better"] != "none" else None
        boards = ([(point_label(p["grid"], axes), ranking(p, m["better"], summary["control"], refs))
                   for p in points] if ranks and len(arms) > 2 else [])
        # ranks side by side: one column per grid point, where the per-point boards are one each
        ranks_table = (header, ranks) if ranks and len(points) > 1 else None
        out.append({"metric": m["name"], "better": m["better"], "dense": m["dense"],
                    "values": (header, values), "ranks_by_point": ranks_table,
                    "diffs": (header + ["all W/T/L"], diffs),
                    "versus": {ref: (header + ["all W/T/L"], rows) for ref, rows in versus.items()},
                    "ranks": boards, "power": power})
    return out


def ranking(point: dict[str, Any], better: str, control: str,
            refs: list[str]) -> tuple[list[str], list[list[str]]]:
    """The arms of one grid point from best to worst mean: rank, seeds finished, value, the paired
    difference to the control and its MDE, and the paired difference to each reference (the arms
    that ran)."""
    header = (["rank", "arm", "seeds", "mean ± 95% CI", f"Δ vs {control} (p; W/T/L)", "MDE vs control"]
              + [f"Δ vs {ref} (p; W/T/L)" for ref in refs])
    rows = []
    for r in sorted((r for r in point["rows"] if r["n"]), key=lambda r: r["rank"]):
        value = fmt(r["mean"]) + ("" if math.isnan(r["ci95"]) else f" ± {fmt(r['ci95'])}")
        row = [str(r["rank"]), r["arm"] + (" (control)" if r["arm"] == control else ""), str(r["n"]), value]
        if r["arm"] == control:
            row += ["–", "–"]
        else:
            mde = r["paired"]["power"]["mde"]
            row += [diff_cells([r["paired"]], better)[0], "–" if mde is None else fmt(mde)]
        row += [diff_cells([r["versus"][ref]], better)[0] if paired_seeds(r["versus"].get(ref)) else "–"
                for ref in refs]
        rows.append(row)
    return header, rows


def paired_seeds(d: dict[str, Any] | None) -> int:
    """How many seeds a paired comparison had (none where the other arm has no cell there yet)."""
    return 0 if d is None else d["wins"] + d["ties"] + d["losses"]


def diff_cells(pairs: list[dict[str, Any]], better: str) -> list[str]:
    """One row of a paired-difference table: per grid point the mean difference (p-value; wins /
    ties / losses), then the wins / ties / losses over every point."""
    cells, total = [], [0, 0, 0]
    for d in pairs:
        total = [total[0] + d["wins"], total[1] + d["ties"], total[2] + d["losses"]]
        wtl = f"; {d['wins']}/{d['ties']}/{d['losses']}" if better != "none" else ""
        cells.append(f"{fmt(d['diff_mean'])} (p={fmt(d['p'])}{wtl})")
    return cells + [f"{total[0]}/{total[1]}/{total[2]}" if better != "none" else "–"]


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

    def row(label: str, grid: dict[str, Any], pw: dict[str, Any], pairs: str) -> list[str]:
        out = [label] + ([point_label(grid, axes)] if axes else [])
        out += [pairs, fmt(pw["sd"]), fmt(pw["mde"]) if pw["mde"] is not None else missing(pw["note"])]
        if target:
            out.append(str(pw["seeds_for_target"]) if pw["seeds_for_target"] is not None
                       else f"> {MAX_SEEDS}" if pw["seeds_over_cap"] else missing(pw["note"]))
        return out

    rows = []
    for p in m["points"]:
        rows += [row(r["arm"], p["grid"], r["paired"]["power"], str(r["paired"]["power"]["n"]))
                 for r in p["rows"] if r["arm"] != summary["control"]]
        pooled = p.get("pooled_power")
        if pooled is not None:
            rows.append(row(f"pooled over {pooled['arms']} arms ({pooled['df']} df)", p["grid"], pooled,
                            f"{pooled['n']} planned"))
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
    return text + (". The pooled row reads the spread of a paired difference from every arm and "
                   "seed at once (the arm × seed table fitted as arm + seed effects; SD = √2 × the "
                   "residual SD, with the residual degrees of freedom in brackets) and gives the MDE "
                   "at the seeds the study file plans: what the whole study resolves if every arm's "
                   "training noise is alike, the figure to size the study on after a pilot of a few "
                   "seeds.")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown (GFM) table; a ``|`` inside a cell (an arm's label) is escaped."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def cell_hardware(data: StudyData) -> dict[str, int]:
    """How many finished cells ran on each processor (:func:`~layerif_core.study.hardware.processor`:
    the GPU's name for a GPU run, the CPU's model and vector instruction set for a CPU run; "not
    recorded" where the record does not say), the most frequent first."""
    return count(processor(c.versions) for c in data.ok)


def hardware_line(data: StudyData) -> list[str]:
    """summary.md's hardware line: the one processor of every cell, or (a report allowed to mix
    them) the cells per processor and what that means for comparisons."""
    counts = cell_hardware(data)
    if not counts:
        return []
    if len(counts) == 1:
        (name, n), = counts.items()
        return [f"Hardware: {name}, all {n} cell{'s' * (n != 1)}.", ""]
    line = (f"Hardware: {describe(counts)}. Processors round floating-point sums differently, and a "
            "result that follows near-ties (a pruning mask) can move on a rerun on another one: "
            "compare arms whose cells ran on the same hardware, or rerun the others there.")
    return [line, ""]


BUDGET_TOL = 1e-4


def budget_line(data: StudyData) -> list[str]:
    """summary.md's budget line, for cells that report ``sparsity/achieved`` and ``sparsity/target``
    (pruning): the largest gap between what a cell pruned and the sparsity it was asked for (its
    grid value of an axis named ``...sparsity``, else the allocation's own mean), which must stay
    within 1e-4 for arms to compare at equal budget. An allocation that clips layers without
    rebalancing (``overflow: clip``) misses the grid's value by what it clipped."""
    def asked(c: Any) -> float:
        nominal = [v for k, v in c.grid.items() if k.split(".")[-1] == "sparsity"]
        return float(nominal[0]) if nominal else c.metrics["sparsity/target"]

    gaps = [abs(c.metrics["sparsity/achieved"] - asked(c)) for c in data.ok
            if "sparsity/achieved" in c.metrics and "sparsity/target" in c.metrics]
    if not gaps:
        return []
    line = (f"Budget: achieved sparsity within {max(gaps):.1e} of its target in all {len(gaps)} "
            "pruned cells")
    if max(gaps) > BUDGET_TOL:
        line += (f"; more than {BUDGET_TOL:g} in {sum(g > BUDGET_TOL for g in gaps)}: those cells "
                 "pruned a different number of weights (an allocation clipped without rebalancing, or "
                 "Wanda's `rounding: floor`?)")
    return [line + ".", ""]


def markdown(data: StudyData, summary: dict[str, Any]) -> str:
    """summary.md: what ran, how to read the tables, the hardware, per metric its tables, the failures."""
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
    lines += hardware_line(data) + budget_line(data)
    shown, waiting = finished_only(summary)
    if waiting:
        lines += [f"Not run yet (no finished cell): {', '.join(waiting)}.", ""]
    for t in tables(shown, data.axes):
        goal = "a measurement" if t["better"] == "none" else f"{t['better']} is better"
        lines += [f"## {t['metric']} ({goal})", ""]
        if t["dense"] is not None:
            lines += [f"Unmodified model: {fmt(t['dense'])}.", ""]
        lines += md_table(*t["values"]) + [""]
        if t["ranks_by_point"]:
            lines += ["Rank per grid point (1 = best mean of its column; – where the arm has no "
                      "finished cell there):", ""] + md_table(*t["ranks_by_point"]) + [""]
        for label, board in t["ranks"]:
            where = f" at {label}" if label != "all" else ""
            lines += [f"Ranking{where} (1 = best mean; equal means share a rank; Δ: paired difference, "
                      "MDE: at 80% power):", ""] + md_table(*board) + [""]
        if t["diffs"][1]:
            lines += ["Paired difference to the control:", ""] + md_table(*t["diffs"]) + [""]
        for ref, table in t["versus"].items():
            lines += [f"Paired difference to {ref}:", ""] + md_table(*table) + [""]
        if t["power"]:
            pw = t["power"]
            lines += ["Power of the paired comparison:", ""] + md_table(pw["header"], pw["rows"])
            lines += ["", pw["explain"], ""] + [f"{n}  " for n in pw["notes"]] + ([""] if pw["notes"] else [])
    lines += select_choices(data)
    if data.failed:
        lines += ["## Failed cells", ""]
        lines += [f"- `{c.id}`: {c.error.type}: {c.error.first_line}" if c.error else
                  f"- `{c.id}`: no error recorded" for c in data.failed]
        lines.append("")
    return "\n".join(lines)


def select_choices(data: StudyData) -> list[str]:
    """For each arm that allocates with ``select``: per grid point, how often each candidate was
    chosen over the seeds."""
    chosen: dict[tuple[str, str], dict[str, int]] = {}
    for cell in data.ok:
        choice = cell.allocation.select if cell.allocation is not None else None
        if choice:
            counts = chosen.setdefault((cell.arm, point_label(cell.grid, data.axes)), {})
            counts[choice["chosen"]] = counts.get(choice["chosen"], 0) + 1
    if not chosen:
        return []
    rows = [[arm, point or "–", ", ".join(f"{label} ×{n}" for label, n in
                                        sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))]
            for (arm, point), counts in chosen.items()]
    return (["## What select chose", "", "The candidate each `select` arm applied, counted over the "
             "seeds (every candidate's held-out value: `cells/<id>.json`, allocation.select).", ""]
            + md_table(["arm", "grid point", "chosen (seeds)"], rows) + [""])


def write_csv(data: StudyData, path: Path, metrics: list[str]) -> None:
    """results.csv: one row per finished cell × metric, every grid axis a column."""
    axes = data.axes
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "arm", "control", *axes, "seed", "metric", "value"])
        for c in sorted(data.ok, key=lambda c: c.id):
            for metric in metrics:
                if metric in c.metrics:
                    w.writerow([c.id, c.arm, c.control,
                                *(json.dumps(c.grid.get(a)) if isinstance(c.grid.get(a), (list, dict))
                                  else c.grid.get(a) for a in axes),
                                c.seed, metric, repr(c.metrics[metric])])


def provenance(data: StudyData) -> dict[str, Any]:
    """Where the numbers come from: hardware, package versions, cell count and times."""
    versions = next((c.versions for c in data.cells if c.versions), {})
    seconds = sum(c.seconds or 0 for c in data.cells)
    finished = [c.finished or "" for c in data.cells]
    return {"hardware": cell_hardware(data), "versions": versions,
            "cells": len(data.cells), "cell_seconds_total": round(seconds, 1),
            "first_finished": min(finished, default=""), "last_finished": max(finished, default="")}


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}"
         "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
         "th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}"
         "img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}")


def write_html(data: StudyData, summary_md: str, plots: list[Path], path: Path) -> None:
    """report.html: ``summary_md`` rendered by markdown-it-py (raw HTML in it, e.g. from an error
    message, is shown as text), then the plots embedded as PNG, the study config and the provenance."""
    import yaml
    from markdown_it import MarkdownIt

    parts = [MarkdownIt("commonmark", {"html": False}).enable("table").render(summary_md), "<h2>Plots</h2>"]
    for p in plots:
        b64 = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(p.name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
    config = yaml.safe_dump({"study": data.study.model_dump(mode="json", exclude={"base"}),
                             "base": data.base}, sort_keys=False)
    parts.append(f"<h2>Study config</h2><pre>{html.escape(config)}</pre>")
    parts.append(f"<h2>Provenance</h2><pre>{html.escape(json.dumps(provenance(data), indent=2))}</pre>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Study "
            f"{html.escape(data.study.name)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    path.write_text(page)

