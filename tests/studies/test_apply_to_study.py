"""A study whose base run has two tasks and ``apply_to: second`` scores and allocates each cell
with the second task: the scores a cell records are that task's, and so is its allocation. The
cell's run directory holds metrics.json in the one format."""

from __future__ import annotations

import json

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)

from layerif_core.config import RunConfig
from layerif_core.pipeline import compute_layer_scores, open_run
from layerif_core.registry import get_registry
from layerif_core.study.config import StudyError
from layerif_core.study.runner import run_study

SECOND = {"name": "second",
          "train": {"source": "bundled:arithmetic", "limit": 6, "max_length": 96},
          "validation": {"source": "bundled:arithmetic", "split": "validation", "limit": 3,
                         "max_length": 96}}


def test_a_study_scores_and_allocates_the_task_apply_to_names(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out", seeds=[0], grid={"allocation.options.sparsity": [0.5]},
                      keep_runs=True)
    base = data["base"]
    base["tasks"] = [{**base["tasks"][0], "name": "first"}, SECOND]
    base["apply_to"] = "second"
    base["application"]["options"]["calibration"] = {"samples": 2, "seqlen": 16}  # the task's text
    base["evaluation"][0]["options"]["max_windows"] = 1
    outcome = run_study(write_study(tmp_path / "s.yaml", data), show_progress=False)
    assert not outcome.failed
    [cell] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "tiny" / "cells").glob("*.json")
              if json.loads(p.read_text())["arm"] == "LayerIF ALL"]

    alone = RunConfig.model_validate({k: v for k, v in base.items() if k not in (
        "allocation", "application", "evaluation", "apply_to")} | {"output_dir": str(tmp_path / "ref")})
    scores = compute_layer_scores(open_run(alone, show_progress=False))
    assert scores["first"].values.tolist() != scores["second"].values.tolist()
    assert cell["scores"]["values"] == scores["second"].values.tolist()
    allocator = get_registry().build("allocator", "alpha_pruning", {"sparsity": 0.5, "epsilon": 0.3})
    want = allocator.allocate(scores["second"], [1.0, 1.0, 1.0]).values  # equal layers: equal weights
    assert cell["allocation"]["values"] == pytest.approx([float(v) for v in want], rel=1e-12)

    written = json.loads((tmp_path / "out" / "tiny" / "runs" / cell["id"] / "metrics.json").read_text())
    assert set(written) == {"format", "model", "task", "application", "metrics", "curves", "evaluators"}
    assert written["format"] == 2 and written["task"] == "second"
    assert written["application"]["name"] == "prune" and written["metrics"] == cell["metrics"]


def test_a_study_refuses_apply_to_each_before_anything_runs(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out")
    data["base"]["tasks"] = [{**data["base"]["tasks"][0], "name": "first"}, SECOND]
    data["base"]["apply_to"] = "each"
    with pytest.raises(StudyError, match=r"`layerif study` applies one allocation; set apply_to to a task"):
        run_study(write_study(tmp_path / "s.yaml", data), show_progress=False)
    assert not (tmp_path / "out").exists()
