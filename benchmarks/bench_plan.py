"""How close ``layerif study --plan`` comes to the measured stage times (goal: within a factor 2 on
SmolLM2-135M on a CPU).

A small study on the embedded SmolLM2-135M-Instruct (float32): LayerIF scores (grad_dot and EK-FAC
on packed WikiText-2 windows), Wanda and SparseGPT pruning at 50% on calibration windows, perplexity
on test windows. The plan predicts each stage on ``--device cpu`` (this machine's matmul throughput,
measured by the plan); the study then runs and its cells record the seconds of each stage. Each row:
predicted and measured seconds and their ratio. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml


def study(output_dir: Path, quick: bool) -> dict:
    windows, seqlen = (16, 128) if quick else (64, 256)
    return {
        "name": "plan-check", "output_dir": str(output_dir), "dense": False,
        "base": {
            "model": {"source": "embedded:smollm2-135m", "dtype": "float32", "device": "cpu"},
            "batch_size": 8, "layers": {"modules": "attention"},
            "tasks": [{"name": "wikitext2",
                       "train": {"source": "bundled:wikitext2", "split": "validation", "pack": True,
                                 "max_length": seqlen, "limit": 2000, "windows": windows},
                       "validation": {"source": "bundled:wikitext2", "split": "validation",
                                      "pack": True, "max_length": seqlen, "skip": 3000, "limit": 400,
                                      "windows": 8}}],
            "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"},
                       "aggregator": {"name": "helpful_sum"}},
            "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}},
            "application": {"name": "prune", "options": {
                "pruner": "wanda", "save_model": False, "save_masks": False, "resume": False,
                "calibration": {"source": "bundled:wikitext2", "split": "validation",
                                "samples": windows // 2, "seqlen": seqlen * 2}}},
            "evaluation": [{"name": "perplexity", "options": {
                "source": "bundled:wikitext2", "split": "test", "seqlen": seqlen * 2,
                "max_windows": windows // 2}}],
        },
        "arms": [
            {"label": "grad_dot", "control": True, "overrides": {}},
            {"label": "ekfac", "overrides": {
                "scorer.estimator": {"name": "ekfac", "options": {"fisher": "empirical"}}}},
            {"label": "sparsegpt", "overrides": {"application.options.pruner": "sparsegpt"}},
        ],
        "seeds": [0],
        "metrics": ["perplexity/wikitext2"],
    }


def run(quick: bool) -> dict:
    from layerif_core.study.plan import plan_study
    from layerif_core.study.records import CellRecord
    from layerif_core.study.runner import run_study

    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(study(work / "out", quick)))
    plan = plan_study(path, "cpu")
    outcome = run_study(path, show_progress=False)
    cells = {c.id: c for c in plan.cells}
    rows = []
    for cell_file in sorted((outcome.directory / "cells").glob("*.json")):
        record = CellRecord.from_json(json.loads(cell_file.read_text()))
        measured = record.timings
        arm = cells[record.id].arm
        scores = next(s for s in plan.stages if s.kind == "scores" and record.id in s.cells)
        cell = next(s for s in plan.stages if s.kind == "cell" and record.id in s.cells)
        if arm != "sparsegpt":  # its scores are grad_dot's, computed once for both
            rows.append(row(arm, "scores", scores.seconds, measured["scores"]))
        done = measured.get("application", 0.0) + measured.get("evaluation", 0.0)
        predicted = cell.seconds - cell.cost.fixed_seconds  # the cell's timings leave out the load
        rows.append(row(arm, "application + evaluation", predicted, done))
    ratios = [r["predicted / measured"] for r in rows]
    return {"device": plan.device.name, "table": rows,
            "within_factor_2": all(0.5 <= r <= 2.0 for r in ratios),
            "sizes": "quick" if quick else "full"}


def row(arm: str, stage: str, predicted: float, measured: float) -> dict:
    return {"arm": arm, "stage": stage, "predicted_s": round(predicted, 2),
            "measured_s": round(measured, 2), "predicted / measured": round(predicted / measured, 2)}
