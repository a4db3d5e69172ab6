"""bf16 (architecture §8): the curvature estimators run the model in bfloat16, hand its own
activations and output gradients to the contractions (no float32 copy at capture), accumulate in
float32, and agree with the float32 model within bf16's rounding.

Stated tolerance (measured on this tiny Llama, 12 train / 4 query examples): bf16 changes I by
≤ 0.6% of max|I| and each layer's row by ≤ 1% in norm; the test allows 2% and 3%."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.estimators.capture import capture, frozen_with_input_grad
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry

TASKS = [{"name": "arith", "train": {"source": "bundled:capitals", "limit": 12, "max_length": 96},
          "validation": {"source": "bundled:capitals", "split": "validation", "limit": 4,
                         "max_length": 96}}]


def _influence(tmp_path, name: str, dtype: torch.dtype) -> torch.Tensor:
    ctx = make_ctx(tmp_path, model=tiny_model("llama").to(dtype), batch_size=3,
                   layers={"modules": "all"}, tasks=TASKS)
    assert ctx.dtype == dtype
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    return get_registry().build("estimator", name).influence(ctx, train, query)


@pytest.mark.parametrize("name", ["ekfac", "kfac", "grad_dot"])
def test_bf16_matches_float32_within_bf16_rounding(tmp_path, name):
    full = _influence(tmp_path / "fp32", name, torch.float32)
    half = _influence(tmp_path / "bf16", name, torch.bfloat16)
    assert half.dtype == torch.float32 and bool(torch.isfinite(half).all())
    assert not torch.equal(half, full)  # the bf16 model really ran in bf16
    assert (half - full).abs().max() <= 0.02 * full.abs().max()
    per_layer = (half - full).norm(dim=1) / full.norm(dim=1)
    assert bool((per_layer <= 0.03).all()), per_layer


def test_capture_hands_over_the_models_own_bf16_tensors(tmp_path):
    ctx = make_ctx(tmp_path, model=tiny_model("llama").to(torch.bfloat16))
    seen = {}
    tm = ctx.layer_map.modules()[0]
    ids = torch.tensor([[5, 6, 7, 8]])
    with frozen_with_input_grad(ctx.model), capture(
            [tm], on_backward=lambda _t, a, d: seen.update(a=a.dtype, d=d.dtype), dtype=None):
        ctx.model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert seen == {"a": torch.bfloat16, "d": torch.bfloat16}
