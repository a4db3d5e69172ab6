"""owl_outlier: OWL's outlier ratio on a hand-computed example and, end to end, against activations
collected one unpadded example at a time."""

from __future__ import annotations

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.pipeline import load_task_splits, score_task
from layerif_core.scorers.owl import outlier_ratio


def test_outlier_ratio_uses_the_mean_of_the_whole_block():
    # module 1: |W|·‖X_j‖ = [[1·1, 2·2], [3·1, 100·2]] = [[1, 4], [3, 200]]
    # module 2: six weights 1 with ‖X‖ = 1 -> six scores 1
    # block mean = (1 + 4 + 3 + 200 + 6) / 10 = 21.4; 5 × 21.4 = 107 -> one outlier (200) of 10
    # (module 1's own mean, 52, would give 260 and no outlier)
    w1, n1 = torch.tensor([[1.0, -2.0], [3.0, 100.0]]), torch.tensor([1.0, 2.0])
    w2, n2 = torch.ones(6, 1), torch.tensor([1.0])
    assert outlier_ratio([w1, w2], [n1, n2], threshold=5.0) == pytest.approx(10.0)
    assert outlier_ratio([w1], [n1], threshold=5.0) == 0.0


def test_outlier_ratio_threshold_is_strict():
    # scores [1, 1, 1, 5]: mean 2; M = 2.5 -> threshold 5, and 5 is not above it
    w, n = torch.tensor([[1.0, 1.0, 1.0, 5.0]]), torch.ones(4)
    assert outlier_ratio([w], [n], threshold=2.5) == 0.0
    assert outlier_ratio([w], [n], threshold=2.4) == pytest.approx(25.0)


def reference_ratios(ctx, split, threshold: float) -> list[float]:
    """Input feature norms from forward pre-hooks, one example per forward (no padding), then
    the ratio counted directly."""
    sumsq = {tm.name: torch.zeros(tm.d_in, dtype=torch.float64) for tm in ctx.layer_map.modules()}

    def collect(name):
        def pre_hook(_m, args):
            sumsq[name] += args[0].double().reshape(-1, args[0].shape[-1]).square().sum(0)
        return pre_hook

    hooks = [tm.module.register_forward_pre_hook(collect(tm.name)) for tm in ctx.layer_map.modules()]
    with torch.no_grad():
        for ids in split.input_ids:
            ctx.model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    out = []
    for layer in ctx.layer_map.layers:
        scores = torch.cat([(tm.weight_matrix(tm.module.weight).double().abs()
                             * sumsq[tm.name].sqrt()).flatten() for tm in layer])
        out.append(100.0 * int((scores > threshold * scores.mean()).sum()) / scores.numel())
    return out


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_scorer_matches_unpadded_reference(tmp_path, arch):
    ctx = make_ctx(tmp_path, model=tiny_model(arch), batch_size=4,
                   scorer={"name": "owl_outlier", "options": {"threshold": 2.0, "limit": 5}})
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    scores = score_task(ctx, ctx.config.tasks[0])
    want = reference_ratios(ctx, train.subset(list(range(5))), 2.0)
    assert scores.scorer == "owl_outlier" and scores.higher_is_better is True
    assert scores.details["n_calibration"] == 5
    weights_per_layer = sum(tm.d_in * tm.d_out for tm in ctx.layer_map.layers[0])
    # equal up to one weight sitting exactly at the threshold
    torch.testing.assert_close(scores.values.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=0, atol=100.0 / weights_per_layer + 1e-4)
    assert max(want) > 0


def test_calibration_data_option_replaces_the_task_split(tmp_path):
    other = {"source": "bundled:antonyms", "limit": 3, "max_length": 96}
    ctx = make_ctx(tmp_path, scorer={"name": "owl_outlier", "options": {"data": other}})
    scores = score_task(ctx, ctx.config.tasks[0])
    from layerif_core.config import DataSpec
    from layerif_core.data import tokenize_split

    split = tokenize_split(DataSpec(**other), ctx.tokenizer)
    want = reference_ratios(ctx, split, 5.0)
    assert scores.details["n_calibration"] == 3
    weights_per_layer = sum(tm.d_in * tm.d_out for tm in ctx.layer_map.layers[0])
    torch.testing.assert_close(scores.values.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=0, atol=100.0 / weights_per_layer + 1e-4)
