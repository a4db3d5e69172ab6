"""``layerif moe`` and ``application: lora_moe`` in ``layerif run``, driven through the real CLI on a
tiny llama saved to disk; bad input gives one line and exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.registry import get_registry
from layerif_core.testing import save_tiny_model

runner = CliRunner()
get_registry(app=app)

MOE = {"rank": 2, "max_steps": 2, "batch_size": 3, "target_modules": ["q_proj", "up_proj"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(path)
    return path


def write_config(tmp_path, model_dir, **changes) -> str:
    cfg = {
        "name": "moe", "output_dir": str(tmp_path / "runs"),
        "model": {"source": str(model_dir), "device": "cpu", "dtype": "float32"},
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 96}}],
        "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"}},
        "batch_size": 3,
        "allocation": {"name": "alphalora_experts", "options": {"total": 7}},
        "application": {"name": "lora_moe", "options": MOE},
    }
    cfg.update(changes)
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


def test_moe_command_is_registered():
    out = invoke("moe", "--help")
    assert out.exit_code == 0 and "--scores" in out.output


def test_run_with_lora_moe_then_moe_from_its_scores(tmp_path, model_dir):
    # scores on attention modules only; experts still go on the MLP's up_proj too
    out = invoke("run", write_config(tmp_path, model_dir, layers={"modules": "attention"}))
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "moe"
    adapter = json.loads((run / "lora_moe/adapter/lora_moe_config.json").read_text())
    assert any(t.endswith("mlp.up_proj") for t in adapter["targets"])
    alloc = json.loads((run / "allocation.json").read_text())["caps"]
    assert alloc["kind"] == "experts" and sum(alloc["values"]) == 7
    assert (run / "lora_moe/adapter/lora_moe.safetensors").is_file()
    # `layerif run` reports the application's own metric: the last validation loss of its log
    last = json.loads((run / "lora_moe/train_log.json").read_text())["validation"][-1]["loss"]
    assert json.loads((run / "metrics.json").read_text())["metrics"] == {"lora_moe/validation_loss": last}
    assert '"lora_moe/validation_loss"' in out.output
    # the same scores, a uniform allocation with the same total, through `layerif moe --scores`
    other = tmp_path / "uniform"
    other.mkdir()
    cfg = write_config(other, model_dir, allocation={"name": "uniform_experts", "options": {"total": 7}})
    out = invoke("moe", cfg, "--scores", str(run / "scores.json"))
    assert out.exit_code == 0, out.output
    assert "[3, 2, 2]" in out.output
    saved = json.loads((other / "runs/moe/scores.json").read_text())
    assert saved == json.loads((run / "scores.json").read_text())


def test_scores_of_another_model_are_refused(tmp_path, model_dir):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "layerif", "higher_is_better": False,
                                           "values": [0.1, 0.2, 0.3, 0.4, 0.5]}}))
    out = invoke("moe", write_config(tmp_path, model_dir), "--scores", str(scores))
    assert out.exit_code == 2
    assert "5 layers" in out.output and "another model" in out.output


@pytest.mark.parametrize("changes,message", [
    ({"allocation": {"name": "alphalora_experts", "options": {"total": 2}}}, "smaller than 3 layers"),
    ({"application": {"name": "lora_moe", "options": {**MOE, "target_modules": ["c_fc"]}}},
     "match no linear module"),
    ({"application": {"name": "lora_moe", "options": {"rnak": 2}}}, "did you mean 'rank'"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, model_dir, changes, message):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "x", "higher_is_better": True,
                                           "values": [1.0, 2.0, 3.0]}}))
    out = invoke("moe", write_config(tmp_path, model_dir, **changes), "--scores", str(scores))
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output
