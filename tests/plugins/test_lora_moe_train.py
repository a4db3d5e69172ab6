"""Training, saving and resuming LoRA-MoE on a tiny llama with the bundled capitals task."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.errors import ArtifactError, ConfigError
from layerif_core.layers import LayerMap
from layerif_core.results import Allocation
from layerif_lora_moe import LoraMoeOptions, load_lora_moe
from layerif_lora_moe.application import LoraMoeApplication

ALLOC = Allocation("experts", [1, 2, 3], "given_experts")
OPTS = dict(rank=2, alpha=4, dropout=0.1, lr=2e-2, max_steps=6, batch_size=2, grad_accum=2,
            target_modules=["q_proj", "v_proj", "up_proj"], aux_loss_weight=0.1)


def _train(tmp_path, stop_after=None, **changes):
    ctx = make_ctx(tmp_path, model=tiny_model("llama"))
    app = LoraMoeApplication(LoraMoeOptions(**{**OPTS, **changes}))
    app.apply(ctx, ctx.model, ALLOC, stop_after=stop_after)
    return ctx, app


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run (checkpoints every 2 steps), shared by the tests below."""
    return _train(tmp_path_factory.mktemp("full"), save_every=2)


def test_training_writes_the_adapter_curves_and_log(trained):
    ctx, app = trained
    run = ctx.run_dir.path
    log = json.loads((run / "lora_moe/train_log.json").read_text())
    assert [r["step"] for r in log["steps"]] == list(range(1, 7))
    assert [v["step"] for v in log["validation"]] == [0, 6]
    assert all(r["aux"] > 0 for r in log["steps"])
    routed_layers = {int(k) for u in log["usage"] for k in u["layers"]}
    assert routed_layers == {1, 2}
    for name in ("plots/lora_moe_loss.png", "plots/lora_moe_usage.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["lora_moe"]["experts"] == [1, 2, 3]
    # what a study cell records: the final validation loss and its curve, from the log
    curve = [[v["step"], v["loss"]] for v in log["validation"]]
    assert app.curves == {"lora_moe/validation_loss": curve}
    assert app.metrics == {"lora_moe/validation_loss": curve[-1][1]}


def test_saved_adapter_reloads_to_identical_logits(trained):
    ctx, app = trained
    ids = torch.tensor([[5, 9, 14, 22, 30, 7]])
    with torch.no_grad():
        trained = ctx.model(input_ids=ids).logits
        fresh = tiny_model("llama")
        base = fresh(input_ids=ids).logits
        load_lora_moe(fresh, ctx.run_dir.file("lora_moe/adapter"))
        reloaded = fresh(input_ids=ids).logits
    assert not torch.allclose(trained, base)  # training changed the model
    assert torch.equal(reloaded, trained)


def test_adapter_refuses_another_model(trained, tmp_path):
    ctx, _ = trained
    other = tiny_model("llama", num_hidden_layers=2)
    with pytest.raises(ArtifactError, match="3 layers, this one has 2"):
        load_lora_moe(other, ctx.run_dir.file("lora_moe/adapter"))
    with pytest.raises(ArtifactError, match="no LoRA-MoE adapter"):
        load_lora_moe(tiny_model("llama"), tmp_path)


def test_resumed_training_equals_an_uninterrupted_run(trained, tmp_path):
    _, full = trained
    part_ctx, _ = _train(tmp_path / "part", stop_after=3)
    ckpt = part_ctx.run_dir.read_tensors("lora_moe/checkpoint.safetensors")
    assert ckpt[1]["step"] == "3"
    # a new process: fresh model, same config and run directory
    ctx = make_ctx(tmp_path / "part", model=tiny_model("llama"))
    app = LoraMoeApplication(LoraMoeOptions(**OPTS))
    app.apply(ctx, ctx.model, ALLOC)
    assert app.log.resumed_from == 3
    assert len(app.log.steps) == 6
    expected, got = full.handle.state_dict(), app.handle.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6), name
    assert [r["loss"] for r in app.log.steps] == pytest.approx([r["loss"] for r in full.log.steps])


def test_training_lowers_the_validation_loss(trained):
    _, app = trained
    first, last = app.log.validation[0]["loss"], app.log.validation[-1]["loss"]
    assert last < first


def test_allocation_of_the_wrong_kind_is_an_error(tmp_path):
    ctx = make_ctx(tmp_path, model=tiny_model("llama"))
    app = LoraMoeApplication(LoraMoeOptions(**OPTS))
    with pytest.raises(ConfigError, match="expert allocation"):
        app.apply(ctx, ctx.model, Allocation("sparsity", [0.5, 0.5, 0.5], "alpha_pruning"))


def test_layer_map_unchanged_after_injection(trained):
    ctx, _ = trained
    assert LayerMap(ctx.model).describe() == LayerMap(tiny_model("llama")).describe()


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    _, app = _train(tmp_path, precision="bf16", max_steps=2, save_every=0)
    losses = [r["loss"] for r in app.log.steps]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in app.handle.trainable().values())


def test_epochs_set_the_number_of_optimizer_steps():
    from layerif_lora_moe.train import total_steps

    opts = LoraMoeOptions(epochs=2, grad_accum=3)
    # 10 examples in micro-batches of 4 -> 3 micro-batches per epoch -> 1 step per epoch
    assert total_steps(opts, 10, 4) == 2
    assert total_steps(LoraMoeOptions(epochs=1.5, grad_accum=1), 10, 4) == 5  # ceil(1.5 * 3)
    assert total_steps(LoraMoeOptions(max_steps=7, epochs=9), 10, 4) == 7


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_token_loss_runs_the_head_only_where_labels_are_and_equals_the_full_loss(arch):
    """The answer-token loss from the kept positions equals the cross-entropy of every position's
    logits; a right-padded batch with answers at different positions in each row."""
    import torch.nn.functional as F

    from layerif_core.data import IGNORE, pad_rows
    from layerif_lora_moe.train import token_loss

    model = tiny_model(arch).eval()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 50, (n,), generator=gen).tolist() for n in (9, 14, 6)]
    labels = [[IGNORE] * (len(r) - 2) + r[-2:] for r in rows]  # the last two tokens are the answer
    batch = pad_rows(rows, labels, 0, [0, 1, 2])
    with torch.no_grad():
        loss, n = token_loss(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)
    assert n == 6
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)


def test_token_loss_falls_back_only_for_a_model_without_logits_to_keep():
    """A forward that does not take ``logits_to_keep`` gets the full-logits call (same loss); a
    TypeError raised for any other reason inside the forward reaches the caller unchanged, after
    one forward, not two."""
    from layerif_core.data import IGNORE, pad_rows
    from layerif_lora_moe.train import token_loss

    model = tiny_model("llama").eval()

    class NoKeep(torch.nn.Module):  # an older causal LM's signature
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    class Broken(NoKeep):
        calls = 0

        def forward(self, input_ids, attention_mask, use_cache, logits_to_keep=None):
            Broken.calls += 1
            ids = torch.cat(input_ids, 1)  # a bug inside the forward: TypeError, tuple expected
            return self.inner(input_ids=ids, attention_mask=attention_mask)

    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    batch = pad_rows(rows, [[IGNORE] * 3 + r[-2:] for r in rows[:1]] + [[IGNORE, 11, 12]], 0, [0, 1])
    with torch.no_grad():
        expected, n = token_loss(model, batch)
        got, m = token_loss(NoKeep(), batch)
        assert m == n == 4
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(TypeError, match="tuple of Tensors") as raised:
            token_loss(Broken(), batch)
    assert "logits_to_keep" not in str(raised.value) and Broken.calls == 1
