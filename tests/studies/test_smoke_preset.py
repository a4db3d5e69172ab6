"""The `examples/studies/smoke.yaml` preset runs as shipped on SmolLM2-135M (2 arms × 2 sparsities ×
2 seeds of Wanda pruning, WikiText-2 perplexity), only its output directory moved."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from layerif_core.cli import app

PRESET = Path(__file__).resolve().parents[2] / "examples" / "studies" / "smoke.yaml"


@pytest.mark.slow
def test_smoke_preset_runs_end_to_end(tmp_path):
    data = yaml.safe_load(PRESET.read_text())
    data["output_dir"] = str(tmp_path / "studies")
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["--quiet", "study", str(path)])
    assert result.exit_code == 0, result.output
    directory = tmp_path / "studies" / "smoke"
    rows = list(csv.DictReader((directory / "results.csv").open()))
    assert len(rows) == 2 * 2 * 2 * 2  # cells × metrics
    ppl = [float(r["value"]) for r in rows if r["metric"] == "perplexity/wikitext2"]
    assert len(ppl) == 8 and all(1 < p < 1e4 for p in ppl)
    summary = (directory / "summary.md").read_text()
    assert "| uniform (control) |" in summary and "| LayerIF +VE |" in summary
    assert "Unmodified model:" in summary
    assert (directory / "report.html").stat().st_size > 10_000
