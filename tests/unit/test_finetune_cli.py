"""The paper's route through the CLI on a tiny model saved to disk: `layerif finetune`, then
`layerif scores` with datainf on the adapter's LoRA parameters, helpful_sum and smoothing."""

from __future__ import annotations

import json
import logging

import yaml
from typer.testing import CliRunner

from conftest import char_tokenizer, make_config, tiny_model
from layerif_core.cli import app
from layerif_core.estimators.datainf import DataInf
from layerif_core.finetune import finetune
from layerif_core.pipeline import load_task_splits, open_run
from layerif_core.testing import save_tiny_model


def write_config(tmp_path, adapter):
    model_dir = tmp_path / "tiny"
    save_tiny_model(model_dir)
    cfg = {
        "name": "paper", "output_dir": str(tmp_path / "runs"), "batch_size": 4,
        "model": {"source": str(model_dir), "adapter": str(adapter), "device": "cpu"},
        "layers": {"lora_only": True},
        "tasks": [{"name": "capitals",
                   "train": {"source": "bundled:capitals", "limit": 8, "max_length": 64},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 64}}],
        "finetune": {"epochs": 1, "batch_size": 4, "rank": 2, "learning_rate": 1e-2},
        "scorer": {"estimator": {"name": "datainf"}, "aggregator": {"name": "helpful_sum"},
                   "postprocess": {"smooth": True}},
    }
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_scoring_before_fine_tuning_says_to_fine_tune(tmp_path):
    path = write_config(tmp_path, tmp_path / "adapter")
    result = CliRunner().invoke(app, ["-q", "scores", str(path)])
    assert result.exit_code == 2
    assert "layerif finetune" in result.output


def test_finetune_then_datainf_scores(tmp_path):
    adapter = tmp_path / "adapter"
    path = write_config(tmp_path, adapter)
    runner = CliRunner()
    result = runner.invoke(app, ["-q", "finetune", str(path)])
    assert result.exit_code == 0, result.output
    assert (adapter / "adapter_model.safetensors").is_file()

    result = runner.invoke(app, ["-q", "scores", str(path)])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "runs" / "paper" / "scores.json").read_text())["capitals"]
    assert scores["details"]["estimator"] == "datainf"
    assert len(scores["values"]) == 3 and len(scores["details"]["raw_values"]) == 3
    manifest = json.loads((tmp_path / "runs" / "paper" / "manifest.json").read_text())
    report = manifest["datainf"]["capitals/train"]
    assert all(".lora_" in name for name in report["lambdas"])
    # an untrained LoRA A has zero gradient only while B = 0: after one epoch every tensor moves
    assert report["zero_gradient_modules"] == []



def test_datainf_warns_when_the_adapter_was_made_on_another_base(tmp_path, caplog):
    cfg = make_config(tmp_path / "ft", finetune={"epochs": 1, "rank": 2},
                      model={"source": "some/other-base"})
    tuned = finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False)
    score_cfg = make_config(tmp_path / "score", layers={"lora_only": True},
                            model={"adapter": str(tuned.adapter_dir)})
    ctx = open_run(score_cfg, show_progress=False, model=tuned.model.eval(), tokenizer=char_tokenizer())
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    with caplog.at_level(logging.WARNING, logger="layerif"):
        DataInf().fit(ctx, train)
    assert any("some/other-base" in r.getMessage() for r in caplog.records)
