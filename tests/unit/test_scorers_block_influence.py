"""block_influence: ShortGPT's BI on a hand-computed example and, end to end, against the model's
own hidden states computed one unpadded example at a time."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.pipeline import load_task_splits, score_task
from layerif_core.scorers.block_influence import block_influence


def test_block_influence_hand_example():
    # token 1: (1, 0) -> (0, 1), cos 0; token 2: (1, 1) -> (2, 2), cos 1; token 3 is padding
    h_in = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, -5.0]]])
    h_out = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert block_influence(h_in, h_out, mask) == pytest.approx(1 - (0 + 1) / 2)
    # angular distance: arccos(0)/π = 1/2 and arccos(1)/π = 0
    assert block_influence(h_in, h_out, mask, angular=True) == pytest.approx((0.5 + 0) / 2)


def test_block_influence_of_an_identity_block_is_zero():
    h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    assert block_influence(h, h, torch.ones(2, 5)) == pytest.approx(0.0, abs=1e-12)
    assert block_influence(h, -h, torch.ones(2, 5)) == pytest.approx(2.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_scorer_matches_hidden_states(tmp_path, arch):
    ctx = make_ctx(tmp_path, model=tiny_model(arch), batch_size=4, scorer={"name": "block_influence"})
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    scores = score_task(ctx, ctx.config.tasks[0])
    n_layers = len(ctx.layer_map)
    # hidden_states[l] enters block l; hidden_states[l + 1] leaves it, except after the last block,
    # where transformers applies the final norm: compare the first L - 1 blocks
    cos_sum, tokens = torch.zeros(n_layers - 1, dtype=torch.float64), 0
    with torch.no_grad():
        for ids in train.input_ids:
            hs = ctx.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in range(n_layers - 1):
                cos_sum[layer] += torch.nn.functional.cosine_similarity(
                    hs[layer][0].double(), hs[layer + 1][0].double(), dim=-1).sum()
            tokens += len(ids)
    want = 1 - cos_sum / tokens
    assert scores.scorer == "block_influence" and scores.higher_is_better is True
    assert scores.details["n_tokens"] == tokens
    torch.testing.assert_close(scores.values[:-1].double(), want, rtol=1e-4, atol=1e-6)


def test_angular_option(tmp_path):
    ctx = make_ctx(tmp_path, scorer={"name": "block_influence", "options": {"angular": True}})
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    scores = score_task(ctx, ctx.config.tasks[0])
    dist_sum, tokens = 0.0, 0
    with torch.no_grad():
        for ids in train.input_ids:
            hs = ctx.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            cos = torch.nn.functional.cosine_similarity(hs[0][0].double(), hs[1][0].double(), dim=-1)
            dist_sum += float(torch.arccos(cos.clamp(-1, 1)).sum() / torch.pi)
            tokens += len(ids)
    assert scores.details["angular"] is True
    assert float(scores.values[0]) == pytest.approx(dist_sum / tokens, rel=1e-4)
