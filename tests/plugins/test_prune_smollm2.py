"""SmolLM2-135M on WikiText-2: 50% unstructured Wanda raises perplexity much less than 50% magnitude
(the ordering of Sun et al. 2024, Table 3), perplexity computed here directly."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from layerif_core.layers import LayerMap
from layerif_prune.calibration import calibration_tokens, calibration_windows
from layerif_prune.options import CalibrationSpec, PruneOptions
from layerif_prune.sequential import prune_blocks

SEQLEN, EVAL_WINDOWS, CALIB_SAMPLES = 256, 4, 4


def wikitext_tokens(tokenizer, split: str, lines: int) -> torch.Tensor:
    """The first ``lines`` lines of the bundled WikiText-2 ``split``, as the calibration reads them."""
    spec = CalibrationSpec(source="bundled:wikitext2", split=split, limit=lines)
    return calibration_tokens(spec, tokenizer, None)[0]


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor) -> float:
    """exp of the mean next-token NLL over non-overlapping windows of SEQLEN tokens."""
    x = tokens[: EVAL_WINDOWS * SEQLEN].reshape(EVAL_WINDOWS, SEQLEN)
    logits = model(input_ids=x, use_cache=False).logits[:, :-1]
    nll = torch.logsumexp(logits, -1) - logits.gather(2, x[:, 1:, None])[..., 0]
    return math.exp(float(nll.double().mean()))


@pytest.mark.slow
def test_wanda_beats_magnitude_at_half_sparsity_on_wikitext(smollm2):
    model, tokenizer = smollm2
    test_tokens = wikitext_tokens(tokenizer, "test", 90)
    calib = calibration_windows(wikitext_tokens(tokenizer, "validation", 145), CALIB_SAMPLES, SEQLEN, 0)
    assert len(test_tokens) >= EVAL_WINDOWS * SEQLEN
    dense = perplexity(model, test_tokens)
    ppl = {}
    for pruner in ("magnitude", "wanda"):
        pruned = copy.deepcopy(model)
        layer_map = LayerMap(pruned)
        opts = PruneOptions(pruner=pruner, batch_size=4)
        prune_blocks(pruned, layer_map, [0.5] * len(layer_map), opts, calib)
        ppl[pruner] = perplexity(pruned, test_tokens)
        del pruned
    assert dense < ppl["wanda"] < ppl["magnitude"], (dense, ppl)
    assert ppl["wanda"] - dense < 0.5 * (ppl["magnitude"] - dense), (dense, ppl)
