"""The CLI: help on every command, init/schema, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.config import load_config
from layerif_core.registry import get_registry

runner = CliRunner()
get_registry(app=app)  # plugins may add commands, as `layerif` does at start-up


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


@pytest.mark.parametrize("command", [[], ["run"], ["scores"], ["plugins"], ["init"], ["tasks"],
                                     ["config"], ["config", "schema"], ["config", "check"]])
def test_every_command_has_help(command):
    out = invoke(*command, "--help")
    assert out.exit_code == 0 and "Usage" in out.output


def test_init_writes_a_config_that_validates(tmp_path):
    path = tmp_path / "c.yaml"
    assert invoke("init", str(path)).exit_code == 0
    cfg = load_config(path)
    assert len(cfg.tasks) == 2 and cfg.scorer.estimator.name == "grad_dot"
    again = invoke("init", str(path))
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_schema_is_json():
    out = invoke("config", "schema")
    assert out.exit_code == 0
    assert "tasks" in json.loads(out.output)["properties"]


def write(tmp_path, **changes) -> str:
    base = yaml.safe_load((tmp_path / "c.yaml").read_text()) if (tmp_path / "c.yaml").exists() else None
    if base is None:
        invoke("init", str(tmp_path / "c.yaml"))
        base = yaml.safe_load((tmp_path / "c.yaml").read_text())
    base.update(changes)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


@pytest.mark.parametrize(("changes", "overrides", "message"), [
    ({"batchsize": 2}, [], "unknown key 'batchsize' (did you mean 'batch_size'?)"),
    ({}, ["scorer.estimator.name=ekfca"], "unknown estimator 'ekfca'"),
    ({}, ["scorer.aggregator.name=nope"], "registered aggregators:"),
    ({}, ["scorer.name=nope"], "unknown scorer 'nope'"),
    ({}, ["model.source=./no/such/dir"], "model path './no/such/dir' does not exist"),
    ({}, ["tasks.0.train.source=missing.jsonl"], "data file 'missing.jsonl' does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, changes, overrides, message):
    args = ["run", write(tmp_path, **changes)]
    for o in overrides:
        args += ["--set", o]
    out = invoke(*args)
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split())
    assert "Traceback" not in out.output


def test_config_check_validates_without_loading_the_model(tmp_path):
    out = invoke("config", "check", write(tmp_path), "--set", "model.source=./nowhere")
    assert out.exit_code == 0 and "ok" in out.output


def test_hub_model_while_offline_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-m", "layerif_core.cli", "--quiet", "run", write(tmp_path),
                          "--set", "model.source=someone/some-model"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "cannot reach the hub to fetch 'someone/some-model'" in " ".join(out.stderr.split())


@pytest.mark.parametrize("example", sorted((__import__("pathlib").Path(__file__).resolve().parents[2]
                                             / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_checks(example):
    out = invoke("config", "check", str(example))
    assert out.exit_code == 0, out.output


def test_config_check_validates_plugin_options(tmp_path):
    out = invoke("config", "check", write(tmp_path), "--set", "allocation.name=alpha_pruning",
                 "--set", "allocation.options.sparsty=0.5")
    assert out.exit_code == 2
    assert "has no option 'sparsty' (did you mean 'sparsity'?)" in " ".join(out.output.split())
