"""The ``lora_ranks`` application on a tiny Llama: the written LoraConfig loads with peft and builds
modules of the allocated ranks and the uniform adapter's parameter count; `layerif lora-ranks` and
`layerif run` through the real CLI (scores, --scores, fine-tune and evaluators); bad input as one
line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from conftest import char_tokenizer, make_ctx, tiny_model
from layerif_core.cli import app
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores
from layerif_core.testing import save_tiny_model
from layerif_lora_ranks.allocator import LoraRankAllocator
from layerif_lora_ranks.options import RankOptions

runner = CliRunner()
get_registry(app=app)
TARGETS = ["q_proj", "v_proj", "up_proj"]
# tiny Llama: q_proj 16→16, v_proj 16→8 (one KV head of 8), up_proj 16→32
COST = {"q_proj": 32, "v_proj": 24, "up_proj": 48}


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def plan(tmp_path, values, alpha="scale", **rank_options):
    ctx = make_ctx(tmp_path, scorer={"name": "random"},
                   finetune={"rank": 4, "alpha": 8, "target_modules": TARGETS},
                   application={"name": "lora_ranks", "options": {"train": False, "alpha": alpha}})
    scores = LayerScores(torch.tensor(values), False, "test")
    allocation = LoraRankAllocator(RankOptions(**rank_options)).allocate(scores)
    application = get_registry().build("application", "lora_ranks", ctx.config.application.options)
    model = application.apply(ctx, ctx.model, allocation)
    return ctx, application, model


def test_written_config_builds_the_allocated_ranks_with_the_uniform_parameter_count(tmp_path):
    ctx, application, model = plan(tmp_path, [0.0, 3.0, 1.0], beta=1)
    assert model is ctx.model and not lora_modules(model)  # no training asked: the model is untouched
    run = ctx.run_dir.path
    ranks = json.loads((run / "allocation.json").read_text())["arith"]["details"]["ranks"]
    # one rank per layer for every type; x = 1 + k·[0, 1, 1/3] with Σ = 12 → [1, 7.75, 3.25]
    assert ranks == {t: [1, 8, 3] for t in TARGETS}
    config = LoraConfig.from_pretrained(str(run / "lora_config"))
    peft_model = get_peft_model(tiny_model(), config)
    built = lora_modules(peft_model)
    assert len(built) == 3 * len(TARGETS)
    for name, module in built.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        kind = name.rsplit(".", 1)[1]
        r = ranks[kind][layer]
        assert module.lora_A["default"].weight.shape[0] == r
        assert module.lora_B["default"].weight.shape[1] == r
        assert module.scaling["default"] == pytest.approx(8 / 4)  # alpha/rank of the uniform adapter
    uniform = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    assert trainable(peft_model) == trainable(uniform) == 4 * 3 * sum(COST.values())
    report = json.loads((run / "lora_ranks.json").read_text())
    assert report["lora_params"] == report["uniform_params"] == trainable(uniform)
    assert (run / "plots" / "lora_ranks.png").read_bytes()[:4] == b"\x89PNG"


def test_fixed_alpha_keeps_lora_alpha_everywhere(tmp_path):
    ctx, _, _ = plan(tmp_path, [0.0, 3.0, 1.0], alpha="fixed", beta=1)
    config = LoraConfig.from_pretrained(str(ctx.run_dir.file("lora_config")))
    assert config.alpha_pattern == {}
    for module in lora_modules(get_peft_model(tiny_model(), config)).values():
        assert module.scaling["default"] == pytest.approx(8 / module.lora_A["default"].weight.shape[0])


def test_per_module_type_ranks_keep_each_type_budget(tmp_path):
    ctx, _, _ = plan(tmp_path, [0.0, 3.0, 1.0], per_module_type=True,
                     rank={"q_proj": 2, "v_proj": 4, "up_proj": 8}, beta=1)
    alloc = json.loads(ctx.run_dir.file("allocation.json").read_text())["arith"]["details"]
    assert {t: sum(r) for t, r in alloc["ranks"].items()} == {"q_proj": 6, "v_proj": 12, "up_proj": 24}
    config = LoraConfig.from_pretrained(str(ctx.run_dir.file("lora_config")))
    peft_model = get_peft_model(tiny_model(), config)
    assert trainable(peft_model) == 3 * (2 * 32 + 4 * 24 + 8 * 48) == alloc["params"]


# --- through the CLI ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(path)
    return path


def write_config(tmp_path, model_dir, **changes) -> str:
    cfg = {
        "name": "ranks", "output_dir": str(tmp_path / "runs"),
        "model": {"source": str(model_dir), "device": "cpu", "dtype": "float32"},
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 96}}],
        "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"}},
        "batch_size": 3,
        "allocation": {"name": "lora_ranks", "options": {"rank": 4, "min_rank": 2, "multiple_of": 2}},
        "application": {"name": "lora_ranks", "options": {"train": False}},
        "finetune": {"rank": 4, "alpha": 8, "target_modules": TARGETS},
    }
    cfg.update(changes)
    path = tmp_path / "ranks.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def answer_loss(model_dir, adapter) -> float:
    """Mean cross-entropy of the answer tokens of the validation examples, one example at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from layerif_core.config import DataSpec
    from layerif_core.data import tokenize_split

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter))
    split = tokenize_split(DataSpec(source="bundled:capitals", split="validation", limit=3, max_length=96),
                           char_tokenizer())
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(split.input_ids, split.labels, strict=True):
            logp = torch.log_softmax(model(input_ids=torch.as_tensor(ids)[None]).logits[0].float(), -1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    total -= float(logp[t - 1, labels[t]])
                    count += 1
    return total / count


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


def test_command_is_listed():
    out = invoke("lora-ranks", "--help")
    assert out.exit_code == 0 and "--scores" in out.output


def test_scores_then_lora_ranks_from_them_with_finetune_and_metrics(tmp_path, model_dir):
    out = invoke("run", write_config(tmp_path, model_dir))
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "ranks"
    first = json.loads((run / "allocation.json").read_text())["caps"]
    assert first["kind"] == "lora_ranks" and sum(first["details"]["ranks"]["q_proj"]) == 12
    assert (run / "lora_config" / "adapter_config.json").is_file()
    # the same scores, fine-tuned with the allocated ranks and with the uniform adapter, evaluated
    other = tmp_path / "tuned"
    other.mkdir()
    cfg = write_config(other, model_dir, application={"name": "lora_ranks", "options": {
        "train": True, "compare_uniform": True}}, finetune={
        "rank": 4, "alpha": 8, "target_modules": TARGETS, "batch_size": 3, "epochs": 1},
        evaluation=[{"name": "perplexity", "options": {"source": "bundled:capitals", "split": "validation",
                                                       "limit": 3, "seqlen": 16,
                                                       "text": "{question} {answer}"}}])
    out = invoke("lora-ranks", cfg, "--scores", str(run))
    assert out.exit_code == 0, out.output
    tuned = other / "runs" / "ranks"
    assert json.loads((tuned / "allocation.json").read_text())["caps"]["values"] == first["values"]
    metrics = json.loads((tuned / "metrics.json").read_text())["metrics"]
    uniform = json.loads((tuned / "lora_ranks" / "uniform_metrics.json").read_text())
    own = json.loads((tuned / "lora_ranks" / "metrics.json").read_text())
    assert metrics and set(uniform) == {f"uniform/{k}" for k in [*metrics, *own]}
    assert own["lora_ranks/validation_loss"] == pytest.approx(answer_loss(model_dir, tuned / "adapter"),
                                                              rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in [*metrics.values(), *uniform.values()])
    saved = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == json.loads((tuned / "lora_config" / "adapter_config.json").read_text()
                                               )["rank_pattern"]
    from safetensors.torch import load_file

    weights = load_file(tuned / "adapter" / "adapter_model.safetensors")
    assert sum(v.numel() for v in weights.values()) == 4 * 3 * sum(COST.values())
    assert sum(v.numel() for v in load_file(tuned / "adapter_uniform" / "adapter_model.safetensors"
                                            ).values()) == 4 * 3 * sum(COST.values())
    # a rerun reuses both finished adapters and gives the same metrics
    again = invoke("lora-ranks", cfg, "--scores", str(run))
    assert again.exit_code == 0, again.output
    assert json.loads((tuned / "metrics.json").read_text())["metrics"] == metrics
    assert json.loads((tuned / "lora_ranks" / "uniform_metrics.json").read_text()) == uniform


@pytest.mark.parametrize("changes,message", [
    ({"allocation": {"name": "lora_ranks", "options": {"rank": 2, "min_rank": 4}}},
     "below min_rank 4 in every layer"),
    ({"allocation": {"name": "lora_ranks", "options": {"min_rank": 0}}}, "min_rank"),
    ({"allocation": {"name": "lora_ranks", "options": {"max_rank": 0}}}, "max_rank"),
    ({"finetune": {"rank": 4, "target_modules": ["q_proj", "c_attn"]}}, "['c_attn'] are not in"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, model_dir, changes, message):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "x", "higher_is_better": True,
                                           "values": [1.0, 2.0, 3.0]}}))
    out = invoke("lora-ranks", write_config(tmp_path, model_dir, **changes), "--scores", str(scores))
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_scores_of_another_model_are_refused(tmp_path, model_dir):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"caps": {"scorer": "layerif", "higher_is_better": False,
                                           "values": [0.1, 0.2, 0.3, 0.4, 0.5]}}))
    out = invoke("lora-ranks", write_config(tmp_path, model_dir), "--scores", str(scores))
    assert out.exit_code == 2
    assert "5 layers" in out.output and "Traceback" not in out.output


def test_finetune_with_a_rank_pattern_reuses_only_the_same_adapter(tmp_path):
    from layerif_core.config import RunConfig
    from layerif_core.finetune import finetune

    config = RunConfig.model_validate({
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 6, "max_length": 64},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 2}}],
        "finetune": {"rank": 4, "target_modules": TARGETS, "batch_size": 3}})

    def tune(pattern):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, rank_pattern=pattern,
                          task_type="CAUSAL_LM")
        return finetune(config, tiny_model(), char_tokenizer(), show_progress=False, lora=lora)

    first = tune({"model.layers.0.self_attn.q_proj": 2})
    assert not first.reused
    assert first.model.base_model.model.model.layers[0].self_attn.q_proj.r["default"] == 2
    assert tune({"model.layers.0.self_attn.q_proj": 2}).reused
    assert not tune({"model.layers.0.self_attn.q_proj": 6}).reused


def test_example_config_and_preset_study_validate():
    from pathlib import Path

    from layerif_core.config import load_config
    from layerif_core.pipeline import check_components
    from layerif_core.study.cells import build_cells
    from layerif_core.study.config import load_study

    root = Path(__file__).resolve().parents[2] / "examples"
    config = load_config(root / "lora_ranks.yaml")
    check_components(config)
    assert config.allocation.name == config.application.name == "lora_ranks"
    study, base = load_study(root / "studies" / "lora_ranks.yaml")
    cells = build_cells(study, base)
    assert len(study.seeds) >= 3 and len(cells) == len(study.arms) * len(study.seeds)
    assert {c.config.allocation.name for c in cells} == {"lora_ranks"}


def test_a_scoring_adapter_is_removed_before_the_ranked_adapter_is_trained(tmp_path):
    # the paper's route scores through a LoRA adapter; the ranked adapter is built on the base model
    scored = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "k_proj"]))
    ctx = make_ctx(tmp_path, model=scored, scorer={"name": "random"},
                   finetune={"rank": 4, "alpha": 8, "target_modules": TARGETS, "batch_size": 3},
                   application={"name": "lora_ranks", "options": {"train": True}})
    allocation = LoraRankAllocator(RankOptions(beta=1)).allocate(LayerScores(torch.tensor([0.0, 3.0, 1.0]),
                                                                             False, "test"))
    app = get_registry().build("application", "lora_ranks", ctx.config.application.options)
    tuned = app.apply(ctx, scored, allocation)
    built = lora_modules(tuned)
    assert {name.rsplit(".", 1)[1] for name in built} == set(TARGETS)  # no k_proj left from scoring
    assert {m.r["default"] for name, m in built.items() if ".layers.1." in name} == {8}
    assert trainable(tuned) == 4 * 3 * sum(COST.values())
    assert app.metrics["lora_ranks/validation_loss"] > 0


def test_early_stopping_reports_its_steps_and_held_out_curve(tmp_path):
    # 6 distinct training examples, ceil(0.3 · 6) = 2 held out, batch 2: 2 steps an epoch, 3 epochs;
    # patience 50 never stops, so all 6 steps run and the held-out loss is measured at 0, 2, 4, 6
    ctx = make_ctx(tmp_path, scorer={"name": "random"},
                   finetune={"rank": 4, "alpha": 8, "target_modules": TARGETS, "batch_size": 2, "epochs": 3},
                   application={"name": "lora_ranks", "options": {
                       "train": True, "early_stopping": {"patience": 50, "eval_every": 2, "holdout": 0.3}}})
    allocation = LoraRankAllocator(RankOptions(beta=1)).allocate(LayerScores(torch.tensor([0.0, 3.0, 1.0]),
                                                                             False, "test"))
    app = get_registry().build("application", "lora_ranks", ctx.config.application.options)
    app.apply(ctx, ctx.model, allocation)
    curve = app.curves["lora_ranks/holdout_loss"]
    assert [p[0] for p in curve] == [0, 2, 4, 6]
    assert app.metrics["train/steps"] == 6
    assert curve[[p[0] for p in curve].index(app.metrics["train/best_step"])][1] == min(p[1] for p in curve)


def test_options_and_command_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, layerif_lora_ranks.options, layerif_lora_ranks.command, layerif_lora_ranks.plugin; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
