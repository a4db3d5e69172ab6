"""The paper's route (scores through a LoRA adapter, ``layers.lora_only``) into each application:
pruning acts on the base model's linear weights, LoRA-MoE builds its experts on the base model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import char_tokenizer, tiny_model
from layerif_core.config import RunConfig

BASE_MODULES = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def save_tiny(tmp: Path, **lora) -> tuple[Path, Path]:
    """A tiny random Llama + tokenizer on disk, and a LoRA adapter for it made with peft (``lora``:
    more ``LoraConfig`` fields)."""
    from peft import LoraConfig, get_peft_model

    model_dir, adapter_dir = tmp / "tiny", tmp / "adapter"
    model = tiny_model("llama")
    model.save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, **lora))
    peft_model.save_pretrained(adapter_dir)
    return model_dir, adapter_dir


def paper_route(tmp: Path, lora: dict | None = None, **fields) -> RunConfig:
    model_dir, adapter_dir = save_tiny(tmp, **(lora or {}))
    data = {
        "name": "paper", "output_dir": str(tmp / "runs"), "batch_size": 4,
        "model": {"source": str(model_dir), "adapter": str(adapter_dir), "dtype": "float32",
                  "device": "cpu"},
        "layers": {"lora_only": True},
        "scorer": {"name": "layerif", "estimator": {"name": "datainf"},
                   "aggregator": {"name": "net_sum"}},
        "tasks": [{"name": "caps",
                   "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 96}}],
    }
    data.update(fields)
    return RunConfig.model_validate(data)


def test_prune_through_a_scoring_adapter_prunes_the_base_weights(tmp_path):
    from layerif_prune.command import run_prune

    cfg = paper_route(tmp_path, allocation={"name": "alpha_pruning",
                                            "options": {"sparsity": 0.5, "epsilon": 0.2}},
                      application={"name": "prune", "options": {
                          "pruner": "wanda", "calibration": {"samples": 4, "seqlen": 32},
                          "save_model": True}})
    out = run_prune(cfg, show_progress=False)
    run = Path(out["run_dir"])
    report = json.loads((run / "sparsity.json").read_text())
    names = set(report["achieved_per_module"])
    assert {n.split(".", 3)[3] for n in names} == BASE_MODULES  # model.layers.<l>.<module>
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert report["scoring_adapter"] == "removed"
    target = json.loads((run / "allocation.json").read_text())["caps"]["values"]
    for layer, t in enumerate(target):  # 16 inputs per row (32 for down_proj): ⌊16·t⌋ per row
        assert abs(report["achieved_per_layer"][layer] - t) <= 1 / 16 + 1e-9
    saved = load_file(str(run / "pruned_model" / "model.safetensors"))
    assert not any("lora" in k for k in saved)  # the scoring adapter is not part of the pruned model
    q = saved["model.layers.0.self_attn.q_proj.weight"]
    assert float((q == 0).float().mean()) >= target[0] - 1 / 16


def test_the_sparsity_budget_is_counted_in_base_weights_not_lora_tensors(tmp_path):
    from layerif_core.pipeline import allocate, open_run
    from layerif_core.results import LayerScores

    # layer 0's adapter has rank 8, the others rank 2: LoRA parameters per layer are unequal, the
    # base linear weights equal
    cfg = paper_route(tmp_path, lora={"rank_pattern": {"layers.0.self_attn.q_proj": 8}},
                      allocation={"name": "alpha_pruning", "options": {"sparsity": 0.5,
                                                                       "epsilon": 0.3}})
    ctx = open_run(cfg, show_progress=False)
    lora_params = ctx.layer_map.num_params()
    assert lora_params[0] > lora_params[1]
    n = len(ctx.layer_map)
    scores = LayerScores(torch.linspace(1.0, 4.0, n), False, "test")
    values = allocate(ctx, {"caps": scores})["caps"].values
    assert max(values) - min(values) > 0.1
    assert abs(sum(values) / n - 0.5) < 1e-6  # equal base layers: the plain mean is the budget


def test_prune_can_merge_the_scoring_adapter_first(tmp_path):
    from layerif_core.models import load_model
    from layerif_prune.command import run_prune

    cfg = paper_route(tmp_path, allocation={"name": "uniform_sparsity", "options": {"sparsity": 0.0}},
                      application={"name": "prune", "options": {"pruner": "magnitude",
                                                                "merge_adapter": True}})
    merged = load_model(cfg.model)[0].merge_and_unload()
    out = run_prune(cfg, show_progress=False)
    saved = load_file(str(Path(out["run_dir"]) / "pruned_model" / "model.safetensors"))
    key = "model.layers.1.self_attn.v_proj.weight"
    torch.testing.assert_close(saved[key], merged.state_dict()[key])  # sparsity 0: the merged weights


def test_lora_moe_through_a_scoring_adapter_builds_experts_on_the_base_model(tmp_path):
    from layerif_lora_moe.runner import run_moe

    cfg = paper_route(tmp_path, allocation={"name": "alphalora_experts", "options": {"total": 7}},
                      application={"name": "lora_moe", "options": {
                          "rank": 2, "max_steps": 1, "target_modules": ["q_proj", "v_proj"],
                          "batch_size": 2}})
    result = run_moe(cfg, show_progress=False)
    experts = result.allocations["caps"].values
    assert sum(experts) == 7
    spec = json.loads((result.run_dir / "lora_moe/adapter/lora_moe_config.json").read_text())
    assert spec["experts"] == experts
    assert spec["targets"] == [f"model.layers.{layer}.self_attn.{m}" for layer in range(3)
                               for m in ("q_proj", "v_proj")]


def test_scoring_attention_only_prunes_every_linear_module(tmp_path):
    """The LayerIF authors score the attention weights and prune whole blocks: a `layers.modules`
    selection is the scoring scope, not the pruning scope."""
    from layerif_prune.command import run_prune

    model_dir, _ = save_tiny(tmp_path)
    cfg = RunConfig.model_validate({
        "name": "attn", "output_dir": str(tmp_path / "runs"), "batch_size": 4,
        "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
        "layers": {"modules": "attention"},
        "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"}},
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 4, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 2,
                                  "max_length": 96}}],
        "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}},
        "application": {"name": "prune", "options": {
            "pruner": "magnitude", "save_model": False, "save_masks": True}}})
    run_prune(cfg, show_progress=False)
    masks = load_file(str(tmp_path / "runs" / "attn" / "masks.safetensors"))
    pruned = {name.split(".", 3)[-1].removesuffix(".weight") for name in masks}
    assert pruned >= BASE_MODULES
