"""``layerif study --plan``: the stages a study shares and what each costs, before anything runs."""

from __future__ import annotations

from pathlib import Path

from study_helpers import PPL, tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from torch import nn
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.study.plan import plan_study
from layerif_core.study.runner import run_study


def test_plan_shares_the_stages_the_runner_shares(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out")
    plan = plan_study(write_study(tmp_path / "s.yaml", data), "H100")
    by_kind: dict[str, int] = {}
    for stage in plan.stages:
        by_kind[stage.kind] = by_kind.get(stage.kind, 0) + stage.runs
    assert len(plan.cells) == 8
    assert by_kind["cell"] == 8 and by_kind["dense evaluation"] == 1
    assert not (tmp_path / "out").exists()  # a plan writes nothing
    outcome = run_study(write_study(tmp_path / "s.yaml", data), show_progress=False)
    assert by_kind["scores"] == outcome.shared["scores"]  # uniform once, LayerIF once per seed


def test_the_plan_of_a_started_study_prices_only_what_is_left(tiny_dir, tmp_path):  # noqa: F811
    """Cells finished, scores cached and the dense evaluation on disk cost nothing in the plan: the
    plan of an interrupted study says how long the rest takes."""
    data = tiny_study(tiny_dir, tmp_path / "out")
    path = write_study(tmp_path / "s.yaml", data)
    fresh = plan_study(path, "H100")
    assert all(s.done == 0 for s in fresh.stages)
    run_study(path, show_progress=False, arms=["uniform"], seeds=[0])
    half = plan_study(path, "H100")
    done = {(s.kind, s.label): s.done for s in half.stages if s.done}
    # uniform, seed 0: both grid points' cells, its scores, the dense evaluation; nothing of LayerIF
    assert done == {("cell", "uniform: load, application, evaluation"): 2, ("scores", "uniform"): 1,
                    ("dense evaluation", "the unmodified model"): 1}
    assert fresh.seconds > half.seconds > 0
    assert "Already in the study directory (not counted): 2 of 8 cells, 2 shared stages." in half.markdown()
    run_study(path, show_progress=False)
    assert plan_study(path, "H100").seconds == 0
    # an arm aggregating cached influences another way (no scores file of its own) costs nothing
    for scores in (tmp_path / "out" / "tiny" / "shared" / "scores").glob("*.json"):
        if "layerif" in scores.read_text():
            scores.unlink()
    assert plan_study(path, "H100").seconds == 0


def test_perplexity_stage_costs_its_forward_flops(tiny_dir, tmp_path):  # noqa: F811
    """2 d_in d_out per token and linear map, plus causal attention 3 T d_attn per token and layer
    (QKᵀ and AV, half of each masked), over max_windows × seqlen tokens."""
    data = tiny_study(tiny_dir, tmp_path / "out")
    plan = plan_study(write_study(tmp_path / "s.yaml", data), "H100")
    dense = next(s for s in plan.stages if s.kind == "dense evaluation")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    cfg = model.config
    heads = cfg.num_attention_heads
    width = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    windows, seqlen = 4, 32
    tokens = windows * seqlen
    expected = 2 * linear * tokens + 3 * cfg.num_hidden_layers * width * seqlen * tokens
    assert abs(dense.cost.total_flops - expected) <= 1e-9 * expected


def test_a_7b_study_plans_offline_and_flags_what_does_not_fit(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out")
    data["base"]["model"] = {"source": "mistralai/Mistral-7B-v0.1", "dtype": "float32"}
    path = write_study(tmp_path / "s.yaml", data)
    result = CliRunner().invoke(app, ["study", str(path), "--plan", "--device", "L40S"])
    assert result.exit_code == 0, result.output
    assert "7.24B parameters" in result.output and "does not fit" in result.output
    roomy = plan_study(path, "H200")
    assert roomy.peak_bytes < roomy.device.memory_bytes
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_one_line(tiny_dir, tmp_path):  # noqa: F811
    path = write_study(tmp_path / "s.yaml", tiny_study(tiny_dir, tmp_path / "out"))
    result = CliRunner().invoke(app, ["study", str(path), "--plan", "--device", "H20O"])
    assert result.exit_code == 2
    assert "device 'H20O' is not in the device table (did you mean 'H200'?)" in result.output


def test_a_model_of_unknown_shape_is_one_line(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out")
    data["base"]["model"] = {"source": "someone/unknown-model-xyz"}
    result = CliRunner().invoke(app, ["study", str(write_study(tmp_path / "s.yaml", data)), "--plan"])
    assert result.exit_code == 2
    assert "the shape of model 'someone/unknown-model-xyz' is not known offline" in result.output


def test_a_bad_cell_fails_the_plan(tmp_path):
    data = tiny_study(Path("/nonexistent/model"), tmp_path / "out",
                      grid={"allocation.options.sparsity": [0.5, "high"]})
    result = CliRunner().invoke(app, ["study", str(write_study(tmp_path / "s.yaml", data)), "--plan"])
    assert result.exit_code == 2
    assert "allocation.options.sparsity=high" in result.output


def test_plan_counts_one_influence_computation_for_arms_that_differ_only_in_aggregation(
        tiny_dir, tmp_path):  # noqa: F811
    """LayerIF ALL and the same with layer 0 at the bottom share the runner's influence run (one run
    directory under shared/runs, the uniform control's scores another), so the plan counts one
    LayerIF scoring run, not two."""
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.3]},
                      seeds=[0])
    data["arms"].append({"label": "ALL, layer 0 at the bottom",
                         "overrides": {"scorer.postprocess.bottom": [0]}})
    path = write_study(tmp_path / "s.yaml", data)
    plan = plan_study(path, "H100")
    runs = {s.label: s.runs for s in plan.stages if s.kind == "scores"}
    assert runs == {"uniform": 1, "layerif grad_dot on caps": 1}
    run_study(path, show_progress=False)
    assert len([p for p in (tmp_path / "out" / "tiny" / "shared" / "runs").iterdir() if p.is_dir()]) == 2


def test_select_candidates_are_priced_once_per_cache_key_as_the_runner_measures_them(tiny_dir, tmp_path):  # noqa: F811
    """Two select arms choosing once (choice_seed 0) share their candidates' measurements, one per
    candidate and sparsity; an arm choosing per seed measures again for seed 1 only (its seed-0
    measurements are the same cache entries). The plan counts what the runner writes."""
    heldout = {"name": "perplexity", "options": {
        "source": "bundled:capitals", "split": "validation", "text": "{question} {answer}", "limit": 40,
        "seqlen": 32, "max_windows": 2, "name": "heldout"}}
    candidates = [{"label": "uniform", "scorer": {"name": "uniform"},
                   "allocation": {"name": "uniform_sparsity"}},
                  {"label": "ramp", "scorer": {"name": "depth"}, "allocation": {"name": "alpha_pruning"},
                   "grid": {"epsilon": [0.2, 0.5]}}]

    def select(**extra):
        return {"scorer.name": "uniform", "allocation": {"name": "select", "options": {
            "sparsity": 0.5, "candidates": candidates, "heldout": heldout, "metric": "perplexity/heldout",
            **extra}}}

    data = tiny_study(tiny_dir, tmp_path / "out", arms=[
        {"label": "uniform", "control": True,
         "overrides": {"scorer.name": "uniform", "allocation.name": "uniform_sparsity",
                       "allocation.options": {}}},
        {"label": "ramp (tuned)", "overrides": select(choice_seed=0)},
        {"label": "select", "overrides": select(choice_seed=0)},
        {"label": "per seed", "overrides": select()}])
    plan = plan_study(write_study(tmp_path / "s.yaml", data), "H100")
    planned = sum(s.runs for s in plan.stages if s.kind == "held-out")
    assert planned == 3 * 2 * 2  # 3 candidates x 2 sparsities x (seed 0, and seed 1 of 'per seed')
    run_study(write_study(tmp_path / "s.yaml", data), show_progress=False)
    measured = list((tmp_path / "out" / "tiny" / "shared" / "select").glob("*.json"))
    assert len(measured) == planned


def test_a_cpu_plan_made_on_a_busy_machine_says_so(monkeypatch):
    """``--device cpu`` measures the share of the cores it gets: on a busy machine its times are
    those of that share, and the plan's device line says so."""
    import os

    from layerif_core.cost import measure_cpu

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert measure_cpu().source == "measured on this machine"
    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count()), 0.0, 0.0))
    assert "busy" in measure_cpu().source
