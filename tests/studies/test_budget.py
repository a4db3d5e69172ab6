"""Arms compare at equal budget: every pruned cell records its target next to what it achieved, and
the summary states the largest gap, flagging one above 1e-4."""

from __future__ import annotations

import json

from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app


def test_every_pruned_cell_meets_its_target_and_the_summary_says_so(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.5]}, seeds=[0])
    result = CliRunner().invoke(app, ["--quiet", "study", str(write_study(tmp_path / "s.yaml", data))])
    assert result.exit_code == 0, result.output
    directory = tmp_path / "out" / "tiny"
    cells = sorted((directory / "cells").glob("*.json"))
    records = [json.loads(c.read_text()) for c in cells]
    assert records[1]["allocation"]["values"] != records[0]["allocation"]["values"]  # two allocations
    # each prunes its target to the weight per matrix: at most half a weight per matrix off overall
    # (21 matrices of the tiny model, 6,912 weights; a real model's are ~1e-6 apart)
    gaps = [abs(r["metrics"]["sparsity/achieved"] - r["metrics"]["sparsity/target"]) for r in records]
    assert all(abs(r["metrics"]["sparsity/target"] - 0.5) < 1e-12 for r in records)
    assert max(gaps) <= 0.5 * 21 / 6912
    summary = (directory / "summary.md").read_text()
    assert f"Budget: achieved sparsity within {max(gaps):.1e} of its target in all 2 pruned cells" in summary
    # a cell that pruned far fewer weights than its target is flagged
    records[0]["metrics"]["sparsity/achieved"] = 0.49
    cells[0].write_text(json.dumps(records[0]))
    result = CliRunner().invoke(app, ["--quiet", "study", "report", str(directory)])
    assert result.exit_code == 0, result.output
    assert "within 1.0e-02 of its target" in (directory / "summary.md").read_text()
    assert "more than 0.0001 in" in (directory / "summary.md").read_text()
    # an allocation that met its own mean but not the grid's sparsity (layers clipped, not rebalanced)
    records[0]["metrics"] |= {"sparsity/achieved": 0.499, "sparsity/target": 0.499}
    cells[0].write_text(json.dumps(records[0]))
    assert CliRunner().invoke(app, ["--quiet", "study", "report", str(directory)]).exit_code == 0
    assert "within 1.0e-03 of its target" in (directory / "summary.md").read_text()
