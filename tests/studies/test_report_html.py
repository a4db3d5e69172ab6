"""report.html is summary.md rendered (markdown-it-py, tables on): the same tables, cell for cell,
raw HTML in a message shown as text; and the paired-difference plot draws each arm's mean paired
difference to the control with its 95% interval, computed here by hand."""

from __future__ import annotations

import json
import math
import statistics
from html.parser import HTMLParser

import pytest
from scipy import stats
from test_report_stats import cell, study, write_dir

from layerif_core.study.plots import difference_panels, draw_paired_differences
from layerif_core.study.report import build_report

SPARSITY = "allocation.options.sparsity"
PPL = {  # arm -> sparsity -> perplexity per seed 0, 1, 2 (lower is better)
    "uniform": {0.5: [46.0, 47.0, 45.5], 0.7: [600.0, 580.0, 610.0]},
    "ramp": {0.5: [44.0, 44.5, 43.0], 0.7: [310.0, 300.0, 330.0]},  # better at both
    "worse": {0.5: [48.0, 49.5, 47.0], 0.7: [900.0, 950.0, 920.0]},  # worse at both
    "mixed": {0.5: [47.0, 45.0, 46.0], 0.7: [620.0, 560.0, 615.0]},  # intervals across 0
}


class Tables(HTMLParser):
    """The text of every table cell, per table and row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def md_tables(text: str) -> list[list[list[str]]]:
    """The tables of a Markdown text as cell texts (bold markers dropped, the rule line skipped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not line.startswith("|---"):
                current.append([c.strip().strip("*") for c in line.strip("|").split(" | ")])
        else:
            current = None
    return tables


@pytest.fixture
def report(tmp_path):
    cells = [cell(arm, s, {"ppl": v}, {SPARSITY: sp}) for arm, by in PPL.items()
             for sp, vals in by.items() for s, v in enumerate(vals)]
    failed = cell("mixed", 3, {}, {SPARSITY: 0.5}) | {
        "status": "failed", "error": {"type": "ValueError", "message": "bad <b>value</b> | here"}}
    arms = [{"label": "uniform", "control": True}] + [{"label": a} for a in PPL if a != "uniform"]
    data = study(test="t", seeds=[0, 1, 2, 3], arms=arms, grid={SPARSITY: [0.5, 0.7]}, metrics=["ppl"])
    directory = write_dir(tmp_path / "s", data, cells + [failed])
    build_report(directory)
    return directory


def test_the_html_holds_the_summary_tables_cell_for_cell(report):
    md = md_tables((report / "summary.md").read_text())
    parser = Tables()
    page = (report / "report.html").read_text()
    parser.feed(page)
    assert len(md) == 6  # values, ranks side by side, a ranking per grid point, paired differences, power
    assert parser.tables == md
    assert parser.tables[1][0] == ["arm", "sparsity=0.5", "sparsity=0.7"]
    means = {a: statistics.mean(PPL[a][0.7]) for a in PPL}
    assert [row[1] for row in parser.tables[3][1:]] == [
        a + (" (control)" if a == "uniform" else "") for a in sorted(means, key=means.get)]
    assert parser.tables[0][0] == ["arm", "sparsity=0.5", "sparsity=0.7"]
    assert [row[0] for row in parser.tables[0][1:]] == ["uniform (control)", "ramp", "worse", "mixed"]
    ramp = statistics.mean(PPL["ramp"][0.5])
    assert f"<td><strong>{ramp:.4g} ± " in page  # the best mean in bold
    assert "<h1>Study <code>s</code></h1>" in page


def test_raw_html_in_a_message_is_shown_as_text(report):
    page = (report / "report.html").read_text()
    assert "bad &lt;b&gt;value&lt;/b&gt; | here" in page and "<b>value</b>" not in page


def expected_difference(arm: str, sparsity: float) -> tuple[float, float]:
    diffs = [a - c for a, c in zip(PPL[arm][sparsity], PPL["uniform"][sparsity], strict=True)]
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return statistics.mean(diffs), half


def test_the_paired_difference_plot_draws_each_arms_difference_and_interval(report):
    summary = json.loads((report / "summary.json").read_text())
    for point, sp in zip(summary["metrics"][0]["points"], (0.5, 0.7), strict=True):
        for row in point["rows"][1:]:
            d, half = expected_difference(row["arm"], sp)
            assert row["paired"]["diff_mean"] == pytest.approx(d, rel=1e-12)
            assert row["paired"]["diff_ci95"] == pytest.approx(half, rel=1e-12)
    panels = difference_panels(summary, [SPARSITY])
    fig = draw_paired_differences(panels, "uniform")
    arms = ["ramp", "worse", "mixed"]
    colours = {"ramp": "tab:green", "worse": "tab:red", "mixed": "tab:gray"}
    from matplotlib.colors import to_rgba

    for ax, sp in zip(fig.axes, (0.5, 0.7), strict=True):
        assert ax.get_title() == f"ppl at sparsity={sp}"
        assert [line.get_xdata()[0] for line in ax.lines if list(line.get_xdata()) == [0, 0]] == [0]  # zero
        assert len(ax.containers) == 3
        for container in ax.containers:
            dot, _, (whisker,) = container.lines
            (x,), (y,) = dot.get_xdata(), dot.get_ydata()
            arm = arms[int(y)]
            d, half = expected_difference(arm, sp)
            assert x == pytest.approx(d, rel=1e-12)
            (lo, _), (hi, _) = whisker.get_segments()[0]
            assert (lo, hi) == (pytest.approx(d - half, rel=1e-9), pytest.approx(d + half, rel=1e-9))
            assert dot.get_color() == colours[arm]
            assert tuple(whisker.get_colors()[0]) == to_rgba(colours[arm])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == arms
    page = (report / "report.html").read_text()
    assert (report / "plots" / "paired_differences.png").stat().st_size > 5_000
    assert "alt='paired_differences.png' src='data:image/png;base64," in page
