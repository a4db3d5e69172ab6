"""`layerif eval` and the `evaluation:` section of `layerif run`, driven through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_ctx, tiny_model
from layerif_core.registry import get_registry
from layerif_core.tasks import bundled_records
from layerif_core.testing import save_tiny_model


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LAYERIF_CACHE=str(cwd / "cache"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "layerif_core.cli", "--quiet", *args], cwd=cwd,
                          env=env, capture_output=True, text=True)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A saved tiny model, a text file, and a config whose `evaluation:` runs both evaluators."""
    save_tiny_model(tmp_path / "tiny")
    text = "\n\n".join(f"{r['question']} {r['answer']}." for r in bundled_records("capitals", "test", n=10))
    (tmp_path / "text.txt").write_text(text)
    spec = {"source": "bundled:capitals", "limit": 4, "max_length": 96}
    config = {
        "name": "e", "output_dir": str(tmp_path / "runs"),
        "model": {"source": "embedded:smollm2-135m", "device": "cpu"},
        "tasks": [{"name": "c", "train": spec, "validation": dict(spec, split="validation")}],
        "batch_size": 2,
        "evaluation": [
            {"name": "perplexity", "options": {"source": str(tmp_path / "text.txt"), "seqlen": 32}},
            {"name": "lm_eval", "options": {"tasks": ["layerif_capitals"], "limit": 3}},
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_eval_command_writes_metrics_with_versions_and_a_markdown_table(workdir):
    out = cli("eval", "c.yaml", "--model", str(workdir / "tiny"), cwd=workdir)
    assert out.returncode == 0, out.stderr
    run = workdir / "runs" / "e"
    data = json.loads((run / "metrics.json").read_text())
    assert data["model"]["source"] == str(workdir / "tiny")
    by_name = {e["name"]: e for e in data["evaluators"]}
    assert by_name["perplexity"]["provider"] == by_name["lm_eval"]["provider"] == "layerif-eval"
    assert by_name["lm_eval"]["tasks"]["layerif_capitals"]["version"] == 1.0
    assert by_name["lm_eval"]["lm_eval_version"] not in ("", "unknown")

    # the number the CLI wrote is the perplexity of the model it was pointed at
    ctx = make_ctx(workdir / "ref", model=tiny_model("llama"))
    ref = get_registry().build("evaluator", "perplexity", {"source": str(workdir / "text.txt"), "seqlen": 32})
    want = ref.evaluate(ctx, ctx.model, ctx.tokenizer)["perplexity/text"]
    assert data["metrics"]["perplexity/text"] == pytest.approx(want, rel=1e-6)

    table = (run / "metrics.md").read_text()
    assert f"| perplexity/text | {want:.6g} |" in table
    assert "| layerif_capitals | 1.0 | 0 | 3 of 100 |" in table


def test_eval_command_bad_input_is_one_line_and_exit_code_2(workdir):
    out = cli("eval", "c.yaml", "--model", str(workdir / "tiny"), "--set",
              "evaluation.0.options.seqlen=4096", cwd=workdir)
    assert out.returncode == 2, out.stderr
    assert "exceeds the model's context of 128" in out.stderr
    assert "Traceback" not in out.stderr

    out = cli("eval", "c.yaml", "--set", "evaluation=[]", cwd=workdir)
    assert out.returncode == 2
    assert "no `evaluation:` section" in out.stderr


@pytest.mark.slow
def test_run_command_evaluates_the_model_after_scoring(workdir):
    out = cli("run", "c.yaml", "--set", f"model.source={workdir / 'tiny'}", "--set",
              "evaluation.1.options.tasks=[layerif_antonyms]", cwd=workdir)
    assert out.returncode == 0, out.stderr
    data = json.loads((workdir / "runs" / "e" / "metrics.json").read_text())
    metrics = data.get("metrics", data)
    assert metrics["perplexity/text"] > 1.0
    assert 0.0 <= metrics["lm_eval/layerif_antonyms/acc"] <= 1.0
    manifest = json.loads((workdir / "runs" / "e" / "manifest.json").read_text())
    assert manifest["evaluation"]["lm_eval"]["tasks"]["layerif_antonyms"]["version"] == 1.0
    assert manifest["evaluation"]["perplexity/text"]["seqlen"] == 32
