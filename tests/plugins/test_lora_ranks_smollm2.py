"""On the real SmolLM2-135M (30 layers): the LoraConfig written by ``lora_ranks`` builds, through
peft, modules of exactly the allocated ranks (layer 1's keys do not catch layers 11 and 21) and the
uniform adapter's parameter count, per module type, in multiples of 4."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import make_config
from layerif_core.pipeline import open_run
from layerif_core.results import LayerScores
from layerif_lora_ranks.allocator import LoraRankAllocator
from layerif_lora_ranks.application import LoraRanks
from layerif_lora_ranks.options import LoraRanksOptions, RankOptions

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.slow
def test_smollm2_modules_get_the_allocated_ranks_and_the_uniform_budget(tmp_path, smollm2):
    base, tokenizer = smollm2
    ctx = open_run(make_config(tmp_path, finetune={"rank": 8, "alpha": 16, "target_modules": TARGETS}),
                   show_progress=False, model=base, tokenizer=tokenizer)
    n = len(ctx.layer_map)
    scores = LayerScores(torch.tensor([float((7 * i) % 11) for i in range(n)]), False, "test")
    opts = RankOptions(min_rank=4, max_rank=32, multiple_of=4, per_module_type=True, beta=1)
    app = LoraRanks(LoraRanksOptions(train=False))
    app.apply(ctx, base, LoraRankAllocator(opts).allocate(scores))
    ranks = json.loads(ctx.run_dir.file("allocation.json").read_text())["arith"]["details"]["ranks"]
    assert n == 30 and len(set(ranks["q_proj"])) > 1
    # d_in + d_out from the model's config: hidden 576, MLP 1536, 3 KV heads of 64
    h, m, kv = base.config.hidden_size, base.config.intermediate_size, 3 * 64
    cost = {"q_proj": 2 * h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": 2 * h,
            "gate_proj": h + m, "up_proj": h + m, "down_proj": m + h}
    for r in ranks.values():
        assert sum(r) == 8 * n and all(x % 4 == 0 and 4 <= x <= 32 for x in r)
    config = LoraConfig.from_pretrained(str(ctx.run_dir.file("lora_config")))
    peft_model = get_peft_model(copy.deepcopy(base), config)  # the session fixture stays untouched
    seen = 0
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer, kind = int(name.split(".layers.")[1].split(".")[0]), name.rsplit(".", 1)[1]
            assert module.r["default"] == ranks[kind][layer] == module.lora_A["default"].weight.shape[0]
            assert module.scaling["default"] == pytest.approx(16 / 8)
            seen += 1
    assert seen == 7 * n
    lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora == 8 * n * sum(cost.values()) == 2_442_240
