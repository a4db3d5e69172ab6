"""With several tasks, the application acts on the allocation the config names (apply_to), or on each
task's in turn; a missing choice is refused before anything loads."""

from __future__ import annotations

import json

import pytest

from layerif_core.config import load_config
from layerif_core.errors import ConfigError
from layerif_core.pipeline import run
from layerif_core.testing import save_tiny_model


def _config(tmp_path, **extra):
    model_dir = tmp_path / "tiny"
    if not model_dir.exists():
        save_tiny_model(model_dir)
    def task(name, source):
        return {"name": name, "train": {"source": source, "limit": 4, "max_length": 96},
                "validation": {"source": source, "split": "validation", "limit": 2, "max_length": 96}}

    data = {"name": "multi", "output_dir": str(tmp_path / "runs"), "batch_size": 4,
            "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
            "tasks": [task("first", "bundled:capitals"), task("second", "bundled:arithmetic")],
            "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"},
                       "aggregator": {"name": "abs_sum"}},
            "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.5}},
            "application": {"name": "prune", "options": {"pruner": "magnitude"}}, **extra}
    return load_config(data=data)


def test_several_tasks_and_an_application_need_apply_to(tmp_path):
    with pytest.raises(ConfigError, match=r"needs one allocation but there are 2 tasks; set apply_to "
                                          r"to a task \(first, second\) or 'each'"):
        _config(tmp_path)
    with pytest.raises(ConfigError, match=r"apply_to 'secnd' is not a task \(did you mean 'second'\?\)"):
        _config(tmp_path, apply_to="secnd")


def test_apply_to_a_task_uses_that_task_allocation(tmp_path):
    result = run(_config(tmp_path, apply_to="second"), show_progress=False)
    report = json.loads((result.run_dir / "sparsity.json").read_text())
    target = result.allocations["second"].values
    assert result.allocations["first"].values != target  # the tasks' scores differ
    assert [round(v, 6) for v in report["target_per_layer"]] == [round(v, 6) for v in target]
    # `layerif run` reports what the application measured, in the one metrics.json format
    assert result.metrics == {"sparsity/achieved": report["achieved_overall"],
                              "sparsity/target": report["target_overall"]}
    written = json.loads((result.run_dir / "metrics.json").read_text())
    assert (written["format"], written["task"], written["application"]["name"]) == (2, "second", "prune")
    assert written["metrics"] == result.metrics and written["evaluators"] == []


def test_apply_to_each_applies_every_task_on_a_fresh_model(tmp_path):
    result = run(_config(tmp_path, apply_to="each"), show_progress=False)
    for task in ("first", "second"):
        report = json.loads((result.run_dir / task / "sparsity.json").read_text())
        assert [round(v, 6) for v in report["target_per_layer"]] == [
            round(v, 6) for v in result.allocations[task].values]
        written = json.loads((result.run_dir / task / "metrics.json").read_text())
        assert written["task"] == task
        assert result.metrics[f"{task}/sparsity/achieved"] == report["achieved_overall"]
    assert not (result.run_dir / "sparsity.json").exists()
