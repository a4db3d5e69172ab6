"""With two tasks and ``apply_to: second``, each application draws its data from the second task:
it acts exactly as a run whose only task is the second one (same calibration, same training and
validation data), and unlike a run on the first task. Each command writes metrics.json in the one
format, naming the application and the task, with the application's own metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerif_core.config import RunConfig
from layerif_core.testing import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_tiny_model(path)
    return path


def task(name: str, source: str, train: int, validation: int) -> dict:
    return {"name": name, "train": {"source": source, "limit": train, "max_length": 96},
            "validation": {"source": source, "split": "validation", "limit": validation,
                           "max_length": 96}}


SHAPE = {"format", "model", "task", "application", "metrics", "curves", "evaluators"}


def check_metrics_file(run: Path, application: str, metrics: dict[str, float]) -> dict:
    """metrics.json of ``run`` is format 2, names the application and task 'second', and holds
    ``metrics`` (what the command returned)."""
    data = json.loads((run / "metrics.json").read_text())
    assert set(data) == SHAPE and data["format"] == 2
    assert data["task"] == "second" and data["application"]["name"] == application
    assert data["metrics"] == metrics
    return data


FIRST = task("first", "bundled:capitals", 3, 2)
SECOND = task("second", "bundled:arithmetic", 9, 3)


def config(tmp_path: Path, model_dir: Path, name: str, tasks: list[dict], **fields) -> RunConfig:
    """Uniform scores (no data read for scoring): only the application's own data can differ."""
    data = {"name": name, "output_dir": str(tmp_path / "runs"), "batch_size": 3,
            "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
            "tasks": tasks, "scorer": {"name": "uniform"}, **fields}
    if len(tasks) > 1:
        data["apply_to"] = "second"
    return RunConfig.model_validate(data)


def test_prune_calibrates_on_the_task_apply_to_names(tmp_path, model_dir):
    from layerif_prune.command import run_prune

    fields = {"allocation": {"name": "uniform_sparsity", "options": {"sparsity": 0.5}},
              "application": {"name": "prune", "options": {
                  "pruner": "wanda", "save_model": False, "save_masks": True,
                  "calibration": {"samples": 4, "seqlen": 16}}}}
    masks, outs = {}, {}
    for name, tasks in (("both", [FIRST, SECOND]), ("second", [SECOND]), ("first", [FIRST])):
        outs[name] = run_prune(config(tmp_path, model_dir, name, tasks, **fields), show_progress=False)
        masks[name] = load_file(str(tmp_path / "runs" / name / "masks.safetensors"))
    run = Path(outs["both"]["run_dir"])
    report = json.loads((run / "sparsity.json").read_text())
    assert outs["both"]["metrics"] == {"sparsity/achieved": report["achieved_overall"],
                                       "sparsity/target": report["target_overall"]}
    check_metrics_file(run, "prune", outs["both"]["metrics"])
    assert any(not torch.equal(masks["first"][k], masks["second"][k]) for k in masks["second"])
    for key, mask in masks["second"].items():
        assert torch.equal(masks["both"][key], mask), key


def moe_log(run: Path) -> dict:
    return json.loads((run / "lora_moe" / "train_log.json").read_text())


def test_lora_moe_trains_and_validates_on_the_task_apply_to_names(tmp_path, model_dir):
    from layerif_lora_moe.runner import run_moe

    fields = {"allocation": {"name": "uniform_experts", "options": {"total": 6}},
              "application": {"name": "lora_moe", "options": {
                  "rank": 2, "batch_size": 3, "epochs": 1, "target_modules": ["q_proj"]}}}
    logs = {}
    for name, tasks in (("both", [FIRST, SECOND]), ("second", [SECOND])):
        result = run_moe(config(tmp_path, model_dir, name, tasks, **fields), show_progress=False)
        logs[name] = moe_log(result.run_dir)
    data = check_metrics_file(result.run_dir.parent / "both", "lora_moe", {
        "lora_moe/validation_loss": logs["both"]["validation"][-1]["loss"]})
    assert data["curves"] == {"lora_moe/validation_loss": [[v["step"], v["loss"]]
                                                           for v in logs["both"]["validation"]]}
    assert len(logs["both"]["steps"]) == 3  # the second task's 8 usable examples, 3 per batch (first: 1 step)
    assert logs["both"]["steps"] == logs["second"]["steps"]
    assert logs["both"]["validation"] == logs["second"]["validation"]


def test_lora_ranks_fine_tunes_on_the_task_apply_to_names(tmp_path, model_dir):
    from layerif_lora_ranks.runner import run_lora_ranks

    fields = {"allocation": {"name": "lora_ranks", "options": {"rank": 2}},
              "application": {"name": "lora_ranks", "options": {"train": True}},
              "finetune": {"rank": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"],
                           "batch_size": 3, "epochs": 1}}
    runs = {}
    for name, tasks in (("both", [FIRST, SECOND]), ("second", [SECOND])):
        runs[name] = run_lora_ranks(config(tmp_path, model_dir, name, tasks, **fields),
                                    show_progress=False)
    both, second = (load_file(str(runs[n].run_dir / "adapter" / "adapter_model.safetensors"))
                    for n in ("both", "second"))
    for key, weight in second.items():
        torch.testing.assert_close(both[key], weight, rtol=0, atol=0)
    state, alone = (json.loads((runs[n].run_dir / "adapter" / "layerif_finetune.json").read_text())
                    for n in ("both", "second"))
    assert state["data"] == alone["data"] and state["steps"] == alone["steps"]
    assert state["data"]["examples"] > 3  # not the first task's 3 examples
    assert runs["both"].metrics["lora_ranks/validation_loss"] == runs["second"].metrics[
        "lora_ranks/validation_loss"]
    assert "second" in json.loads((runs["both"].run_dir / "allocation.json").read_text())
    own = json.loads((runs["both"].run_dir / "lora_ranks" / "metrics.json").read_text())
    assert runs["both"].metrics == own  # no evaluators configured: the application's metrics
    check_metrics_file(runs["both"].run_dir, "lora_ranks", own)
