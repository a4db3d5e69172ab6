"""The shared-context log-likelihoods equal lm-eval's HFLM request for request: shared contexts of
different lengths in one batch, continuations of one to three tokens, a context seen once; Llama,
GPT-2 (learned positions) and a LoRA-MoE model, in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from conftest import make_ctx
from layerif_core.layers import LayerMap
from layerif_core.testing import tiny_model
from layerif_eval.shared_context import SharedContextHFLM
from layerif_lora_moe import inject_lora_moe


def requests(tokenizer) -> list:
    """(strings, context tokens, continuation tokens) as lm-eval builds them: three questions of
    three or four choices, contexts of different lengths, and one prompt with a single continuation."""
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for question, choices in (("What is the capital of France?", [" Paris", " Lyon", " Nice and more"]),
                              ("Two plus two?", ["4", "5", "22", " four or so"]),
                              ("A longer question that has quite a few more words in it than others?",
                               [" yes", " no", " maybe not"]),
                              ("Alone:", [" one continuation only"])):
        context = f"Question: {question}\nAnswer:"
        out += [((context, c), enc(context), enc(c)) for c in choices]
    assert len({len(r[1]) for r in out}) > 2 and {len(r[2]) for r in out} >= {1, 2, 3}
    return out


def sharp(arch: str) -> torch.nn.Module:
    """A tiny model whose weights are large enough that attention depends on positions and padding
    (at the usual 0.02 init every token attends almost evenly, and a wrong position goes unseen)."""
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def sharp_lora_moe() -> torch.nn.Module:
    """The sharp llama with LoRA-MoE experts (1, 2, 3 per layer, top-2 routing) of random weights."""
    model = sharp("llama")
    inject_lora_moe(model, LayerMap(model), [1, 2, 3], rank=2, top_k=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize(("arch", "dtype"), [("llama", torch.float32), ("gpt2", torch.float32),
                                             ("lora_moe", torch.float32), ("llama", torch.bfloat16)])
def test_shared_context_loglikelihoods_equal_hflms(tmp_path, arch, dtype):
    ctx = make_ctx(tmp_path)
    model = (sharp_lora_moe() if arch == "lora_moe" else sharp(arch)).to(dtype).eval()
    reqs = requests(ctx.tokenizer)
    tok = ctx.tokenizer
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=3)._loglikelihood_tokens(reqs)
    got = SharedContextHFLM(pretrained=model, tokenizer=tok, batch_size=2)._loglikelihood_tokens(reqs)
    tol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 attention sums in another order
    for (w, wg), (g, gg), r in zip(want, got, reqs, strict=True):
        assert g == pytest.approx(w, abs=tol * max(1.0, abs(w))), r[0]
        if dtype == torch.float32:
            assert gg == wg, r[0]
