"""The layer map finds the decoder blocks and their linear modules on every supported architecture."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, tiny_model
from layerif_core.config import LayerSpec
from layerif_core.errors import ConfigError
from layerif_core.layers import LayerMap

# the linear modules of one block, by architecture, as the transformers sources define them
EXPECTED = {
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                 "mlp.dense_4h_to_h"},
    "opt": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
            "fc1", "fc2"},
}
EXPECTED.update({a: EXPECTED["llama"] for a in ("mistral", "gemma", "qwen2")})


@pytest.mark.parametrize("arch", ARCHS)
def test_finds_every_block_and_its_linear_modules(arch):
    model = tiny_model(arch)
    lm = LayerMap(model)
    assert len(lm) == model.config.num_hidden_layers
    for layer in lm.layers:
        assert {m.short for m in layer} == EXPECTED[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_and_mlp_partition_the_block(arch):
    model = tiny_model(arch)
    full = {m.name for m in LayerMap(model).modules()}
    attn = {m.name for m in LayerMap(model, LayerSpec(modules="attention")).modules()}
    mlp = {m.name for m in LayerMap(model, LayerSpec(modules="mlp")).modules()}
    assert attn and mlp and not (attn & mlp) and attn | mlp == full


def test_regex_selects_modules():
    lm = LayerMap(tiny_model("llama"), LayerSpec(regex=r"q_proj|v_proj"))
    assert [m.short for m in lm.layers[0]] == ["self_attn.q_proj", "self_attn.v_proj"]


def test_selection_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match="matches no linear module"):
        LayerMap(tiny_model("llama"), LayerSpec(regex="no_such_module"))


def test_gpt2_conv1d_shapes_and_grad_layout():
    model = tiny_model("gpt2")
    tm = next(m for m in LayerMap(model).layers[0] if m.short == "mlp.c_fc")
    assert tm.transposed and tm.has_bias
    assert (tm.d_in, tm.d_out) == (16, 64)
    x = torch.randn(2, 5, tm.d_in)
    tm.module(x).sum().backward()
    g = tm.grad_matrix()
    # d(sum y)/dW for y = W a + b is 1·aᵀ summed over tokens; bias column is the token count
    want_w = torch.ones(tm.d_out, 1) @ x.reshape(-1, tm.d_in).sum(0, keepdim=True)
    torch.testing.assert_close(g[:, : tm.d_in], want_w)
    torch.testing.assert_close(g[:, tm.d_in], torch.full((tm.d_out,), 10.0))


def test_num_params_counts_tracked_weights_and_biases():
    model = tiny_model("gpt2")
    lm = LayerMap(model)
    want = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith("transformer.h.0.") and ("c_attn" in n or "c_proj" in n or "c_fc" in n))
    assert lm.num_params()[0] == want
