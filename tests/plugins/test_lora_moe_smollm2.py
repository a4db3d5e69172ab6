"""A short LoRA-MoE run on the real SmolLM2-135M with a bundled task lowers the validation loss, and
the saved adapter reloads onto a fresh copy of the base model with identical logits."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_config
from layerif_core.pipeline import open_run
from layerif_core.results import Allocation
from layerif_lora_moe import LoraMoeOptions, load_lora_moe
from layerif_lora_moe.application import LoraMoeApplication


@pytest.mark.slow
def test_short_run_lowers_validation_loss_and_reloads(tmp_path, smollm2):
    base, tokenizer = smollm2
    model = copy.deepcopy(base)  # the session fixture stays untouched
    task = {"name": "arith",
            "train": {"source": "bundled:arithmetic", "limit": 16, "max_length": 48},
            "validation": {"source": "bundled:arithmetic", "split": "validation", "limit": 8,
                           "max_length": 48}}
    ctx = open_run(make_config(tmp_path, tasks=[task], batch_size=4), show_progress=False,
                   model=model, tokenizer=tokenizer)
    n = len(ctx.layer_map)
    experts = [1 + (layer % 3) for layer in range(n)]  # 1, 2, 3 experts in turn: plain and routed
    app = LoraMoeApplication(LoraMoeOptions(rank=2, alpha=4, dropout=0.0, lr=3e-3, max_steps=4,
                                            target_modules=["v_proj"], top_k=2))
    app.apply(ctx, model, Allocation("experts", experts, "given_experts"))
    first, last = app.log.validation[0]["loss"], app.log.validation[-1]["loss"]
    assert last < first
    ids = torch.tensor([tokenizer("Question: 2 plus 3?\nAnswer: 5")["input_ids"]])
    fresh = copy.deepcopy(base)
    load_lora_moe(fresh, ctx.run_dir.file("lora_moe/adapter"))
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
        assert not torch.equal(base(input_ids=ids).logits, model(input_ids=ids).logits)
