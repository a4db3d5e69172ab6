"""Early stopping of LoRA-MoE training on a tiny llama: the patience rule, the weights put back,
the held-out part left out of training, and resume."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.results import Allocation
from layerif_lora_moe import LoraMoeOptions
from layerif_lora_moe.application import LoraMoeApplication

ALLOC = Allocation("experts", [1, 2, 3], "given_experts")
OPTS = dict(rank=2, alpha=4, dropout=0.0, lr=1e-1, max_steps=16, batch_size=2,
            target_modules=["q_proj", "v_proj"], aux_loss_weight=0.1, warmup_steps=0)
STOP = {"patience": 3, "eval_every": 2, "holdout": 0.34}


def _train(tmp_path, stop_after=None, **changes):
    ctx = make_ctx(tmp_path, model=tiny_model("llama"))
    app = LoraMoeApplication(LoraMoeOptions(**{**OPTS, "early_stopping": STOP, **changes}))
    app.apply(ctx, ctx.model, ALLOC, stop_after=stop_after)
    return app


def _weights(app) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in app.handle.trainable().items()}


def test_training_stops_after_patience_evaluations_without_improvement_and_keeps_the_start(tmp_path):
    # lr 1e-9 moves no loss by min_delta 1e-3: the evaluations after steps 1 and 2 do not improve on
    # step 0, so with patience 2 training stops at step 2 and the initial weights are put back
    app = _train(tmp_path / "run", lr=1e-9, max_steps=20,
                 early_stopping={"patience": 2, "eval_every": 1, "min_delta": 1e-3, "holdout": 0.34})
    assert [p[0] for p in app.curves["lora_moe/holdout_loss"]] == [0, 1, 2]
    assert app.metrics["train/steps"] == 2 and app.metrics["train/best_step"] == 0
    ctx = make_ctx(tmp_path / "fresh", model=tiny_model("llama"))
    untrained = LoraMoeApplication(LoraMoeOptions(**OPTS)).inject(ctx, ctx.model, ALLOC)
    start = {k: v.detach() for k, v in untrained.trainable().items()}
    got = _weights(app)
    assert got.keys() == start.keys()
    assert all(torch.equal(got[k], start[k]) for k in start)


def test_the_weights_of_the_best_evaluation_are_put_back(tmp_path):
    full = _train(tmp_path / "full")
    best, trained = int(full.metrics["train/best_step"]), int(full.metrics["train/steps"])
    assert 0 < best < trained  # the case this test needs: the held-out loss rose after its best
    holdout = dict(full.curves["lora_moe/holdout_loss"])
    assert holdout[best] == min(holdout.values())
    # the same run interrupted at the best step holds that step's weights
    at_best = _weights(_train(tmp_path / "part", stop_after=best))
    got = _weights(full)
    assert all(torch.equal(got[k], at_best[k]) for k in at_best)
    # and the reported validation loss is that of the weights put back, not of the last step
    assert full.metrics["lora_moe/validation_loss"] == full.log.final_validation
    assert full.metrics["lora_moe/validation_loss"] != full.log.validation[-1]["loss"]


def test_the_held_out_examples_are_not_trained_on(tmp_path):
    # 6 distinct training examples, ceil(0.3 · 6) = 2 held out: one epoch at batch size 1 is 4 steps
    app = _train(tmp_path, max_steps=None, epochs=1, batch_size=1,
                 early_stopping={"patience": 50, "eval_every": 1, "holdout": 0.3})
    assert len(app.log.steps) == 4 and app.metrics["train/steps"] == 4


def test_an_interrupted_run_resumes_to_the_same_stop_and_weights(tmp_path):
    full = _train(tmp_path / "full")
    _train(tmp_path / "part", stop_after=3)
    resumed = _train(tmp_path / "part")
    assert resumed.log.resumed_from == 3
    assert resumed.metrics == pytest.approx(full.metrics)
    assert resumed.curves.keys() == full.curves.keys()
    for name, curve in full.curves.items():
        assert [x for p in resumed.curves[name] for x in p] == pytest.approx([x for p in curve for x in p])
    want, got = _weights(full), _weights(resumed)
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
