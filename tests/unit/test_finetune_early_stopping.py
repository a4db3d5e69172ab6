"""Early stopping of the LoRA fine-tune on a tiny model: the patience rule, the adapter of the best
evaluation saved, the held-out examples left out of training, resume, and the held-out split."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import char_tokenizer, make_config, tiny_model
from layerif_core.data import TokenizedSplit
from layerif_core.early_stopping import EarlyStopping, holdout_split
from layerif_core.errors import DataError
from layerif_core.finetune import finetune

OPTIONS = {"epochs": 4, "learning_rate": 3e-2, "batch_size": 2, "rank": 4, "dropout": 0.0, "seed": 0,
           "schedule": "constant"}


def config(tmp_path, limit: int = 8, **options):
    cfg = make_config(tmp_path, finetune={**OPTIONS, **options})
    cfg.tasks[0].train.limit = limit
    return cfg


def lora_state(model) -> dict[str, torch.Tensor]:
    """The LoRA tensors by their name in the base model (peft's wrapper adds ``base_model.model.``)."""
    return {k.removeprefix("base_model.model."): v.detach().clone() for k, v in model.named_parameters()
            if "lora_" in k}


def test_training_stops_after_patience_evaluations_without_improvement_and_keeps_the_start(tmp_path):
    # learning rate 1e-9 moves no loss by min_delta 1e-3: the evaluations after steps 1 and 2 do not
    # improve on step 0, so with patience 2 training stops at step 2 and the initial adapter is saved
    stop = EarlyStopping(patience=2, eval_every=1, min_delta=1e-3, holdout=0.25)
    result = finetune(config(tmp_path, learning_rate=1e-9), model=tiny_model(), tokenizer=char_tokenizer(),
                      show_progress=False, early_stopping=stop)
    assert result.steps == 2 and result.best_step == 0
    assert [p[0] for p in result.holdout_curve] == [0, 1, 2]
    saved = lora_state(result.model)
    assert all(torch.count_nonzero(v) == 0 for k, v in saved.items() if "lora_B" in k)  # peft starts B at 0
    state = json.loads((result.adapter_dir / "layerif_finetune.json").read_text())
    assert state["best_step"] == 0 and state["steps"] == 2


def test_the_adapter_of_the_best_evaluation_is_saved(tmp_path):
    base = tiny_model()
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, _loss: float) -> None:  # get_peft_model adapts ``base`` in place
        seen[step] = lora_state(base)

    stop = EarlyStopping(patience=3, eval_every=1, holdout=0.25)
    result = finetune(config(tmp_path, learning_rate=2e-1), model=base, tokenizer=char_tokenizer(),
                      show_progress=False, on_step=keep, early_stopping=stop)
    best = result.best_step
    assert 0 < best < result.steps  # the case this test needs: the held-out loss rose after its best
    assert dict(result.holdout_curve)[best] == min(loss for _, loss in result.holdout_curve)
    saved = lora_state(result.model)
    assert saved.keys() == seen[best].keys()
    assert all(torch.equal(saved[k], seen[best][k]) for k in saved)
    assert not all(torch.equal(saved[k], seen[result.steps][k]) for k in saved)


def test_the_held_out_examples_are_not_trained_on(tmp_path):
    # 8 distinct examples, ceil(0.25 · 8) = 2 held out: one epoch at batch size 1 is 6 steps
    stop = EarlyStopping(patience=50, eval_every=1, holdout=0.25)
    result = finetune(config(tmp_path, epochs=1, batch_size=1), model=tiny_model(),
                      tokenizer=char_tokenizer(), show_progress=False, early_stopping=stop)
    assert result.steps == 6
    state = json.loads((result.adapter_dir / "layerif_finetune.json").read_text())
    assert (state["data"]["examples"], state["data"]["held_out"]) == (6, 2)


def test_an_interrupted_run_resumes_to_the_same_stop_and_adapter(tmp_path):
    stop = EarlyStopping(patience=3, eval_every=1, holdout=0.25)
    opts = {"learning_rate": 2e-1, "save_steps": 2}
    straight = finetune(config(tmp_path / "a", **opts), model=tiny_model(), tokenizer=char_tokenizer(),
                        show_progress=False, early_stopping=stop)

    def stop_at_3(step: int, _loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    cfg = config(tmp_path / "b", **opts)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False,
                 on_step=stop_at_3, early_stopping=stop)
    resumed = finetune(cfg, model=tiny_model(), tokenizer=char_tokenizer(), show_progress=False,
                       early_stopping=stop)
    assert resumed.resumed_from == 2
    assert (resumed.steps, resumed.best_step) == (straight.steps, straight.best_step)
    assert [x for p in resumed.holdout_curve for x in p] == pytest.approx(
        [x for p in straight.holdout_curve for x in p], rel=1e-5)
    want, got = lora_state(straight.model), lora_state(resumed.model)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def split_of(sequences: list[list[int]]) -> TokenizedSplit:
    return TokenizedSplit("s", sequences, [list(s) for s in sequences], "fp")


def test_holdout_split_shares_no_sequence_with_the_training_part():
    # 10 examples, 4 of them copies of [1, 2]: copies stay on one side
    seqs = [[1, 2], [3], [1, 2], [4], [5], [1, 2], [6], [7], [1, 2], [8]]
    for seed in range(20):
        kept, held = holdout_split(split_of(seqs), 0.3, seed)
        k, h = {tuple(s) for s in kept.input_ids}, {tuple(s) for s in held.input_ids}
        assert not k & h
        assert len(kept) + len(held) == 10 and len(held) >= 3  # ceil(0.3 · 10)
        assert sorted(map(tuple, kept.input_ids + held.input_ids)) == sorted(map(tuple, seqs))
    again = holdout_split(split_of(seqs), 0.3, 1)[1].input_ids
    assert holdout_split(split_of(seqs), 0.3, 1)[1].input_ids == again


def test_holding_out_every_example_is_an_error():
    with pytest.raises(DataError, match="leaves none .* lower early_stopping.holdout"):
        holdout_split(split_of([[1, 2], [1, 2], [1, 2]]), 0.1, 0)
