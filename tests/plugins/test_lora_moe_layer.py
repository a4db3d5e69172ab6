"""The LoRA-MoE layer on tiny real models: identity at init, plain LoRA when n = 1, the mixture
against a per-token reference, the load-balancing loss against its formula, bad input."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from conftest import tiny_model
from layerif_core.errors import ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_lora_moe import inject_lora_moe
from layerif_lora_moe.layer import switch_aux_loss, token_mask

IDS = torch.tensor([[5, 9, 14, 22, 30, 7, 11], [3, 18, 40, 12, 8, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def randomize(handle, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.trainable().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_zero_b_at_init_leaves_the_base_model_exactly():
    model = tiny_model("llama")
    expected = logits(model)
    handle = inject_lora_moe(model, LayerMap(model), [2, 3, 4], rank=2, top_k=2)
    assert handle.routed(), "layers with n > 1 must have routers"
    assert torch.equal(logits(model), expected)


def test_one_expert_everywhere_equals_peft_plain_lora():
    model = tiny_model("llama")
    plain = copy.deepcopy(model)
    handle = inject_lora_moe(model, LayerMap(model), [1, 1, 1], rank=3, alpha=6, top_k=1,
                             target_modules=["q_proj", "v_proj", "down_proj"])
    randomize(handle)
    inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6, target_modules=handle.spec.targets), plain)
    plain.load_state_dict(handle.state_dict(), strict=False)
    assert not handle.routed()
    assert torch.allclose(logits(model), logits(plain), atol=0, rtol=0)


def test_identical_experts_mix_to_plain_lora():
    model = tiny_model("llama")
    plain = copy.deepcopy(model)
    handle = inject_lora_moe(model, LayerMap(model), [1, 1, 1], rank=2, top_k=1)
    randomize(handle)
    state = handle.state_dict()
    mixed = copy.deepcopy(plain)
    moe = inject_lora_moe(mixed, LayerMap(mixed), [3, 3, 3], rank=2, top_k=2)
    mixed.load_state_dict(state, strict=False)
    with torch.no_grad():  # every expert a copy of expert 0; the gates sum to 1
        for _, name, experts in moe.routed():
            module = dict(mixed.named_modules())[name]
            experts.A.copy_(module.lora_A["default"].weight.expand_as(experts.A))
            experts.B.copy_(module.lora_B["default"].weight.expand_as(experts.B))
            experts.router.weight.normal_()
    assert torch.allclose(logits(mixed), logits(model), atol=1e-5)


def test_mixture_matches_a_per_token_reference():
    model = tiny_model("llama")
    handle = inject_lora_moe(model, LayerMap(model), [4, 1, 1], rank=2, alpha=8, top_k=2,
                             target_modules=["up_proj"])
    randomize(handle, seed=3)
    layer, name, experts = handle.routed()[0]
    module = dict(model.named_modules())[name]
    x = torch.randn(2, 5, module.base_layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module(x)
    a = [module.lora_A["default"].weight] + list(experts.A)
    b = [module.lora_B["default"].weight] + list(experts.B)
    scale = 8 / 2
    for i in range(2):
        for t in range(5):
            xt = x[i, t]
            z = experts.router.weight @ xt
            top = torch.topk(z, 2).indices.tolist()
            g = torch.softmax(z[top], dim=0)
            y = module.base_layer.weight @ xt
            for gate, e in zip(g, top, strict=True):
                y = y + scale * gate * (b[e] @ (a[e] @ xt))
            assert torch.allclose(out[i, t], y.detach(), atol=1e-5)


def test_switch_loss_on_a_hand_built_routing():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    chosen = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])  # top-1
    f = [2 / 4, 1 / 4, 1 / 4]
    p = [(0.7 + 0.1 + 0.5 + 0.2) / 4, (0.2 + 0.6 + 0.4 + 0.2) / 4, (0.1 + 0.3 + 0.1 + 0.6) / 4]
    expected = 3 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    assert float(switch_aux_loss(probs, chosen, 1)) == pytest.approx(expected, abs=1e-7)
    # top-2: each token dispatches to two experts, f sums to 1 over the 2·N assignments
    chosen2 = torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 1, 0], [1, 0, 1]])
    f2 = [3 / 8, 3 / 8, 2 / 8]
    expected2 = 3 * sum(fi * pi for fi, pi in zip(f2, p, strict=True))
    assert float(switch_aux_loss(probs, chosen2, 2)) == pytest.approx(expected2, abs=1e-7)


def test_router_statistics_skip_padding_tokens():
    model = tiny_model("llama")
    handle = inject_lora_moe(model, LayerMap(model), [3, 1, 1], rank=2, top_k=1, target_modules=["q_proj"])
    _, name, experts = handle.routed()[0]
    captured = {}
    module = dict(model.named_modules())[name]
    module.register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0].detach()))
    with torch.no_grad(), token_mask(MASK):
        model(input_ids=IDS, attention_mask=MASK)
    x = captured["x"].reshape(-1, captured["x"].shape[-1])[MASK.reshape(-1).bool()]
    probs = torch.softmax(experts.router.weight.detach() @ x.T, dim=0).T  # [N, 3]
    chosen = torch.nn.functional.one_hot(probs.argmax(-1), 3).float()
    f, p = chosen.mean(0), probs.mean(0)
    assert float(experts.aux) == pytest.approx(float(3 * (f * p).sum()), abs=1e-6)
    assert float(handle.aux_loss()) == pytest.approx(float(experts.aux))


def test_only_experts_and_routers_train():
    model = tiny_model("llama")
    handle = inject_lora_moe(model, LayerMap(model), [2, 1, 3], rank=2)
    trainable = handle.trainable()
    assert trainable and all(("lora_" in n) for n in trainable)
    assert any(".router." in n for n in trainable)
    base = [n for n, p in model.named_parameters() if "lora_" not in n]
    assert base and not any(dict(model.named_parameters())[n].requires_grad for n in base)
    randomize(handle)
    with token_mask(MASK):
        out = model(input_ids=IDS, attention_mask=MASK)
        (out.logits.square().mean() + handle.aux_loss()).backward()
    assert all(p.grad is not None for n, p in trainable.items() if ".router." in n)


def test_top_k_is_capped_per_layer_and_said(caplog):
    model = tiny_model("llama")
    with caplog.at_level(logging.WARNING, logger="layerif"):
        handle = inject_lora_moe(model, LayerMap(model), [1, 2, 5], rank=2, top_k=3)
    assert handle.spec.top_k == [1, 2, 3]
    assert "capped" in caplog.text and "1 (n=2)" in caplog.text
    assert [e.top_k for _, _, e in handle.routed()][-1] == 3


def test_target_modules_that_match_nothing_are_an_error():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="match no linear module.*q_proj"):
        inject_lora_moe(model, LayerMap(model), [1, 2, 3], target_modules=["c_attn"])


def test_allocation_of_another_model_is_an_error():
    model = tiny_model("llama")
    with pytest.raises(DataError, match="5 layers but the model has 3"):
        inject_lora_moe(model, LayerMap(model), [1, 2, 3, 1, 1])
