"""LoRA fine-tuning: the loss goes down, the saved adapter loads back to the same model, an
interrupted run resumes to the same adapter, and an adapter made for another base is refused."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import char_tokenizer, make_config, tiny_model
from layerif_core.data import tokenize_split
from layerif_core.errors import ModelError
from layerif_core.finetune import finetune, mean_token_loss
from layerif_core.models import attach_adapter

OPTIONS = {"epochs": 4, "learning_rate": 3e-2, "batch_size": 4, "rank": 4, "dropout": 0.0, "seed": 0}


def config(tmp_path, limit: int = 16, **options):
    cfg = make_config(tmp_path, finetune={**OPTIONS, **options})
    cfg.tasks[0].train.limit = limit
    return cfg


def data_loss(model, cfg) -> float:
    """Mean token loss over the whole training split, in eval mode (no dropout)."""
    tok = char_tokenizer()
    data = tokenize_split(cfg.tasks[0].train, tok, cfg.seed)
    model.eval()
    with torch.no_grad():
        batch = next(data.batches(len(data), tok.pad_token_id))
        return float(mean_token_loss(model, batch))


def test_loss_goes_down_and_the_adapter_reloads_with_identical_logits(tmp_path):
    cfg = config(tmp_path)
    before = data_loss(tiny_model(), cfg)
    result = finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False)
    after = data_loss(result.model, cfg)
    assert after < before - 0.05
    assert result.steps == 16 and len(result.losses) == 16
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not (result.adapter_dir / "checkpoints").exists()

    reloaded = attach_adapter(tiny_model(), str(result.adapter_dir)).eval()
    ids = torch.tensor([[5, 9, 14, 20, 31, 7]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits,
                               rtol=0, atol=1e-6)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path):
    opts = {"epochs": 2, "batch_size": 2, "gradient_accumulation": 2, "save_steps": 2, "dropout": 0.1}
    straight = finetune(config(tmp_path / "a", limit=12, **opts), model=tiny_model(),
                        tokenizer=char_tokenizer(), show_progress=False)
    assert straight.steps == 6

    def stop_at_3(step: int, _loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    cfg = config(tmp_path / "b", limit=12, **opts)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False,
                 on_step=stop_at_3)
    resumed = finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    want, got = lora_state(straight.model), lora_state(resumed.model)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)

    again = finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False)
    assert again.reused and again.steps == 6
    state = json.loads((again.adapter_dir / "layerif_finetune.json").read_text())
    assert state["resumed_from"] == 2


def test_an_adapter_made_for_another_base_model_is_refused(tmp_path):
    result = finetune(config(tmp_path, limit=4, epochs=1), model=tiny_model(), tokenizer=char_tokenizer(),
                      show_progress=False)
    other = tiny_model(hidden_size=32, intermediate_size=64)
    with pytest.raises(ModelError, match="does not fit this model"):
        attach_adapter(other, str(result.adapter_dir))


def test_a_model_that_already_has_lora_is_refused(tmp_path):
    first = finetune(config(tmp_path / "a", limit=4, epochs=1), model=tiny_model(),
                     tokenizer=char_tokenizer(), show_progress=False)
    with pytest.raises(ModelError, match="already has LoRA"):
        finetune(config(tmp_path / "b", limit=4, epochs=1), model=first.model,
                 tokenizer=char_tokenizer(), show_progress=False)


def test_the_loss_counts_only_the_answer_tokens(tmp_path):
    cfg = config(tmp_path, limit=3)
    tok = char_tokenizer()
    data = tokenize_split(cfg.tasks[0].train, tok, cfg.seed)
    model = tiny_model()
    with torch.no_grad():
        got = float(mean_token_loss(model, next(data.batches(3, tok.pad_token_id))))
        nll = []
        for rec in data.records:
            prompt = tok(f"Question: {rec['question']}\nAnswer: ", add_special_tokens=False)["input_ids"]
            answer = tok(rec["answer"], add_special_tokens=False)["input_ids"]
            logp = model(input_ids=torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
            nll += [-float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(answer)]
    assert got == pytest.approx(sum(nll) / len(nll), rel=1e-5)
