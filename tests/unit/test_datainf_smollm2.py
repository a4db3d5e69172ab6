"""The paper's route on the real SmolLM2-135M: a short LoRA fine-tune, then DataInf per block."""

from __future__ import annotations

import pytest
import torch

from layerif_core.config import ModelSpec, RunConfig
from layerif_core.finetune import finetune
from layerif_core.models import load_model
from layerif_core.pipeline import compute_layer_scores, open_run
from layerif_core.registry import get_registry


@pytest.mark.slow
def test_finetune_then_datainf_on_smollm2(tmp_path):
    # a private copy: fine-tuning injects LoRA layers into the model it is given
    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32", device="cpu"))
    cfg = RunConfig.model_validate({
        "name": "paper", "output_dir": str(tmp_path), "batch_size": 8,
        "model": {"source": "embedded:smollm2-135m", "adapter": str(tmp_path / "adapter")},
        "layers": {"lora_only": True},
        "tasks": [{"name": "capitals",
                   "train": {"source": "bundled:capitals", "limit": 8, "max_length": 48},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 4,
                                  "max_length": 48}}],
        "finetune": {"epochs": 1, "batch_size": 8, "rank": 4, "learning_rate": 1e-3,
                     "target_modules": ["q_proj", "v_proj"]},
        "scorer": {"estimator": {"name": "datainf"}, "aggregator": {"name": "helpful_sum"}},
    })
    tuned = finetune(cfg, model=model, tokenizer=tokenizer, show_progress=False)
    assert tuned.steps == 1 and all(torch.isfinite(torch.tensor(tuned.losses)))

    ctx = open_run(cfg, show_progress=False, model=tuned.model.eval(), tokenizer=tokenizer)
    assert len(ctx.layer_map) == 30
    assert [m.short for m in ctx.layer_map.layers[0]] == [
        "self_attn.q_proj.lora_A", "self_attn.q_proj.lora_B", "self_attn.v_proj.lora_A",
        "self_attn.v_proj.lora_B"]
    scores = compute_layer_scores(ctx)["capitals"]
    influence = ctx.run_dir.read_tensors("influence.safetensors")[0]["capitals"]
    assert influence.shape == (30, 8) and torch.isfinite(influence).all()
    torch.testing.assert_close(scores.values, get_registry().build("aggregator", "helpful_sum")(influence))
    assert scores.higher_is_better is False and scores.values.gt(0).any()
