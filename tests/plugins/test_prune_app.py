"""The prune application end to end on a tiny model: artifacts, the saved model, achieved sparsity
measured on it, the `layerif prune` command, and bad input as one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_ctx
from layerif_core.cli import app
from layerif_core.errors import ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_core.pipeline import allocate, compute_layer_scores
from layerif_core.registry import get_registry
from layerif_core.results import Allocation
from layerif_core.testing import save_tiny_model

get_registry(app=app)
CALIB = {"samples": 4, "seqlen": 32}


def prune_ctx(tmp_path, pruner: str = "wanda", **options):
    return make_ctx(tmp_path, scorer={"name": "random"},
                    allocation={"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.3}},
                    application={"name": "prune", "options": {"pruner": pruner, "calibration": CALIB,
                                                              **options}})


def test_application_saves_a_loadable_model_and_measures_sparsity_on_it(tmp_path):
    from transformers import AutoModelForCausalLM

    ctx = prune_ctx(tmp_path)
    allocation = next(iter(allocate(ctx, compute_layer_scores(ctx)).values()))
    spec = ctx.config.application
    model = get_registry().build("application", spec.name, spec.options).apply(ctx, ctx.model, allocation)
    run = ctx.run_dir.path
    saved = json.loads((run / "allocation.json").read_text())
    assert next(iter(saved.values()))["values"] == allocation.values
    loaded = AutoModelForCausalLM.from_pretrained(run / "pruned_model")
    for (name, p), (name2, q) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert name == name2 and torch.equal(p, q), name
    report = json.loads((run / "sparsity.json").read_text())
    assert report["target_per_layer"] == allocation.values
    masks = load_file(run / "masks.safetensors")
    for layer, modules in enumerate(LayerMap(loaded).layers):
        zeros = sum(int((tm.module.weight == 0).sum()) for tm in modules)
        total = sum(tm.module.weight.numel() for tm in modules)
        assert report["achieved_per_layer"][layer] == pytest.approx(zeros / total, abs=1e-12)
        for tm in modules:
            w = tm.weight_matrix(tm.module.weight)
            assert torch.equal(masks[tm.name], w == 0)
            assert report["achieved_per_module"][tm.name] == pytest.approx(
                float((w == 0).float().mean()), abs=1e-9)
    # every allocation prunes the same number of weights: the target, to the weight per matrix
    numel = sum(tm.module.weight.numel() for tm in LayerMap(loaded).modules())
    assert abs(report["achieved_overall"] - 0.5) <= 0.5 * len(masks) / numel
    # the worse a layer's score, the more it was pruned
    order = sorted(range(3), key=lambda i: allocation.values[i])
    achieved = [report["achieved_per_layer"][i] for i in order]
    assert achieved == sorted(achieved)
    assert (run / "plots" / "sparsity.png").read_bytes()[:4] == b"\x89PNG"


def test_nm_pattern_ignores_the_allocation_and_says_so(tmp_path, caplog):
    ctx = prune_ctx(tmp_path, pruner="magnitude", pattern="2:4", save_model=False)
    alloc = Allocation("sparsity", [0.3, 0.5, 0.7], "test")
    result = get_registry().build("application", "prune", ctx.config.application.options)
    result.apply(ctx, ctx.model, alloc)
    assert result.result.achieved["per_layer"] == [0.5, 0.5, 0.5]
    assert "ignored" in caplog.text


@pytest.mark.parametrize("options,words", [
    ({"pattern": "4:4"}, "1 <= N < M"),
    ({"pattern": "5:4"}, "1 <= N < M"),
    ({"pattern": "2-4"}, "N:M"),
    ({"pruner": "obs"}, "pruner"),
])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(ConfigError) as info:
        get_registry().get("application", "prune").options(options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_calibration_shorter_than_the_sequence_length_is_an_error(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("only a few characters")
    ctx = prune_ctx(tmp_path, calibration={"source": str(text), "samples": 2, "seqlen": 64})
    app_ = get_registry().build("application", "prune", ctx.config.application.options)
    with pytest.raises(DataError, match="shorter than the sequence length 64"):
        app_.apply(ctx, ctx.model, Allocation("sparsity", [0.5] * 3, "test"))


def test_sequence_longer_than_the_context_is_an_error(tmp_path):
    ctx = prune_ctx(tmp_path, calibration={"samples": 2, "seqlen": 4096})
    app_ = get_registry().build("application", "prune", ctx.config.application.options)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        app_.apply(ctx, ctx.model, Allocation("sparsity", [0.5] * 3, "test"))


def test_allocation_of_another_model_is_an_error(tmp_path):
    ctx = prune_ctx(tmp_path)
    app_ = get_registry().build("application", "prune", ctx.config.application.options)
    with pytest.raises(DataError, match="the model has 3"):
        app_.apply(ctx, ctx.model, Allocation("sparsity", [0.5] * 4, "test"))


def write_model_and_config(tmp_path) -> tuple[str, dict]:
    model_dir = tmp_path / "tiny"
    text = tmp_path / "eval.txt"
    text.write_text("The capital of France is Paris. " * 8)
    save_tiny_model(model_dir)
    cfg = {
        "name": "p", "output_dir": str(tmp_path / "runs"),
        "model": {"source": str(model_dir), "device": "cpu"},
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 96}}],
        "batch_size": 4,
        "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.6, "epsilon": 0.2}},
        "application": {"name": "prune", "options": {"pruner": "sparsegpt", "calibration": CALIB}},
        "evaluation": [{"name": "perplexity", "options": {"source": str(text), "seqlen": 32}}],
    }
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), cfg


def test_prune_command_with_scores_of_an_earlier_run(tmp_path):
    config, _ = write_model_and_config(tmp_path)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "x", "higher_is_better": False,
                                           "values": [3.0, 1.0, 2.0]}}))
    out = CliRunner().invoke(app, ["--quiet", "prune", config, "--scores", str(scores)])
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "p"
    report = json.loads((run / "sparsity.json").read_text())
    alloc = json.loads((run / "allocation.json").read_text())["caps"]["values"]
    assert alloc[0] == max(alloc) and alloc[1] == min(alloc)  # layer 0 scored worst
    assert report["pruner"] == "sparsegpt" and (run / "pruned_model" / "config.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["sparsity/achieved"] == report["achieved_overall"]
    assert metrics["perplexity/eval"] > 1  # the evaluators ran on the pruned model


def test_prune_command_rejects_scores_with_another_layer_count(tmp_path):
    config, _ = write_model_and_config(tmp_path)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "x", "higher_is_better": False,
                                           "values": [3.0, 1.0]}}))
    out = CliRunner().invoke(app, ["--quiet", "prune", config, "--scores", str(scores)])
    assert out.exit_code == 2
    assert "have 2 layers but the model has 3" in out.output
    assert len(out.output.strip().splitlines()) <= 2  # one message (rich may wrap it once)


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_interrupted_pruning_resumes_after_the_last_finished_block(tmp_path, pruner):
    from layerif_prune.application import prune_model

    alloc = Allocation("sparsity", [0.3, 0.5, 0.7], "test")
    opts = get_registry().get("application", "prune").options(
        {"pruner": pruner, "calibration": CALIB, "save_model": False})
    ref_ctx = prune_ctx(tmp_path / "ref", pruner=pruner)
    reference = prune_model(ref_ctx, ref_ctx.model, alloc, opts)

    started = []

    def interrupted(items, _total, _desc):
        for layer in items:
            if len(started) == 2:  # blocks 0 and 1 finished
                raise KeyboardInterrupt
            started.append(layer)
            yield layer

    ctx = prune_ctx(tmp_path / "run", pruner=pruner)
    ctx.track = interrupted
    with pytest.raises(KeyboardInterrupt):
        prune_model(ctx, ctx.model, alloc, opts)
    state = ctx.run_dir.file("prune_state")
    assert (state / "inputs.safetensors").is_file()

    rerun = prune_ctx(tmp_path / "run", pruner=pruner)  # a new process: the dense model again
    resumed = []
    rerun.track = lambda items, _total, _desc: (resumed.append(x) or x for x in items)
    result = prune_model(rerun, rerun.model, alloc, opts)
    assert resumed == [2]
    assert not state.exists()
    for tm, ref in zip(LayerMap(result.model).modules(), LayerMap(reference.model).modules(), strict=True):
        assert torch.equal(tm.module.weight, ref.module.weight), tm.name
        assert torch.equal(result.masks[tm.name], reference.masks[tm.name]), tm.name
