"""Sparsity allocators: exact weighted mean, bounds, worst layer most sparse, ties equal, clipping."""

from __future__ import annotations

import pytest
import torch

from layerif_core.errors import ConfigError
from layerif_core.registry import load_registry
from layerif_core.results import LayerScores


def _alloc(name: str, scores: list[float], weights: list[float] | None = None,
           higher_is_better: bool = False, **options):
    reg = load_registry(entry_points=False)
    s = LayerScores(torch.tensor(scores), higher_is_better, "test")
    return reg.build("allocator", name, options).allocate(s, weights)


def _random_case(seed: int, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g).tolist()
    weights = (torch.rand(n, generator=g) * 9 + 1).tolist()
    return scores, weights


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sparsity,epsilon", [(0.5, 0.2), (0.7, 0.3), (0.3, 0.5)])
def test_alpha_pruning_weighted_mean_is_exact_and_within_range(seed, sparsity, epsilon):
    scores, weights = _random_case(seed)
    a = _alloc("alpha_pruning", scores, weights, sparsity=sparsity, epsilon=epsilon)
    v = torch.tensor(a.values, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    assert float((v * w).sum() / w.sum()) == pytest.approx(sparsity, abs=1e-12)
    # the unclipped map is η·[1 − ε, 1 + ε]: its max/min ratio is (1 + ε)/(1 − ε)
    assert float(v.max() / v.min()) == pytest.approx((1 + epsilon) / (1 - epsilon), rel=1e-9)
    assert float(v.min()) >= 0 and float(v.max()) < 1


def test_alpha_pruning_matches_the_definition():
    scores, weights = _random_case(7, n=6)
    eps, s = 0.25, 0.6
    a = _alloc("alpha_pruning", scores, weights, sparsity=s, epsilon=eps)
    x = torch.tensor(scores, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    r = (x - x.min()) / (x.max() - x.min()) * 2 * eps + (1 - eps)
    expected = r * s * w.sum() / (w * r).sum()
    assert torch.allclose(torch.tensor(a.values, dtype=torch.float64), expected, atol=1e-12)


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_worst_layer_gets_the_most_sparsity(higher_is_better):
    scores, weights = _random_case(3)
    a = _alloc("alpha_pruning", scores, weights, higher_is_better, sparsity=0.5, epsilon=0.3)
    worst = max(range(len(scores)), key=lambda i: -scores[i] if higher_is_better else scores[i])
    best = min(range(len(scores)), key=lambda i: -scores[i] if higher_is_better else scores[i])
    assert a.values[worst] == max(a.values)
    assert a.values[best] == min(a.values)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    sparsities = [a.values[i] for i in order]
    assert sparsities == sorted(sparsities, reverse=higher_is_better)


def test_ties_stay_equal_and_equal_scores_give_uniform():
    a = _alloc("alpha_pruning", [1.0, 3.0, 3.0, 2.0], [1, 2, 5, 1], sparsity=0.5, epsilon=0.2)
    assert a.values[1] == a.values[2]
    u = _alloc("alpha_pruning", [2.0] * 4, [1, 2, 5, 1], sparsity=0.5, epsilon=0.2)
    assert u.values == pytest.approx([0.5] * 4, abs=1e-15)


def test_absolute_epsilon_spans_s_plus_minus_delta_with_equal_weights():
    a = _alloc("alpha_pruning", [0.0, 0.5, 1.0], [1, 1, 1], sparsity=0.5, epsilon=0.1, absolute=True)
    assert a.values == pytest.approx([0.4, 0.5, 0.6], abs=1e-12)


def test_wide_epsilon_is_clipped_and_rebalanced_with_the_mean_exact(caplog):
    scores, weights = _random_case(11)
    a = _alloc("alpha_pruning", scores, weights, sparsity=0.8, epsilon=0.5, max_sparsity=0.9)
    v = torch.tensor(a.values, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    assert a.details["clipped"], "this case must clip"
    assert float(v.max()) == pytest.approx(0.9)
    assert float((v * w).sum() / w.sum()) == pytest.approx(0.8, abs=1e-12)
    assert "clipped" in caplog.text
    # the free layers keep the linear map: their ratios to each other are unchanged
    free = [i for i in range(len(v)) if i not in a.details["clipped"]]
    x = torch.tensor(scores, dtype=torch.float64)
    r = (x - x.min()) / (x.max() - x.min()) + 0.5
    assert torch.allclose(v[free] / r[free], (v[free] / r[free])[0].expand(len(free)), rtol=1e-12)


def test_overflow_clip_only_clips_as_ww_sparsity_does(caplog):
    """AlphaPruning's ww_sparsity: η = s·Σp / Σ p·r once, then every ratio above 0.99 set to 0.99
    (no re-balancing: the mean falls below s)."""
    scores, weights = _random_case(11)
    a = _alloc("alpha_pruning", scores, weights, sparsity=0.8, epsilon=0.5, overflow="clip")
    x = torch.tensor(scores, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    r = (x - x.min()) / (x.max() - x.min()) * 1.0 + 0.5  # [1 − ε, 1 + ε]
    want = (r * 0.8 * w.sum() / (w * r).sum()).clamp(max=0.99)
    assert a.details["clipped"] and "overflow: clip" in caplog.text
    torch.testing.assert_close(torch.tensor(a.values, dtype=torch.float64), want, rtol=1e-12, atol=0)
    assert float((want * w).sum() / w.sum()) < 0.8
    rebalanced = _alloc("alpha_pruning", scores, weights, sparsity=0.8, epsilon=0.5)
    assert rebalanced.values != a.values


def test_epsilon_above_one_pins_the_best_layers_at_zero():
    a = _alloc("alpha_pruning", [0.0, 1.0, 2.0, 3.0], [1, 1, 1, 1], sparsity=0.4, epsilon=1.5)
    assert a.values[0] == 0.0 and 0 in a.details["clipped"]
    assert sum(a.values) / 4 == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("options", [{"sparsity": 1.0}, {"sparsity": -0.1},
                                     {"sparsity": 0.5, "epsilon": -0.1}])
def test_bad_options_are_one_line_errors(options):
    with pytest.raises(ConfigError) as info:
        _alloc("alpha_pruning", [1.0, 2.0], [1, 1], **options)
    assert "\n" not in str(info.value)


def test_unreachable_target_after_clipping_is_an_error():
    with pytest.raises(ConfigError, match="cannot be reached"):
        _alloc("alpha_pruning", [1.0, 2.0], [1, 1], sparsity=0.95, epsilon=0.2, max_sparsity=0.9)


def test_weights_of_the_wrong_length_are_an_error():
    with pytest.raises(ConfigError, match="do not belong"):
        _alloc("alpha_pruning", [1.0, 2.0, 3.0], [1, 1], sparsity=0.5)


def test_uniform_sparsity():
    a = _alloc("uniform_sparsity", [3.0, 1.0, 2.0], [1, 2, 3], sparsity=0.6)
    assert a.values == [0.6, 0.6, 0.6]


def test_owl_sparsity_matches_the_definition():
    scores = [0.1, 0.4, 0.3, 0.9]  # worse-ness (higher_is_better=False)
    s, lam = 0.6, 0.08
    a = _alloc("owl_sparsity", scores, None, sparsity=s, lamda=lam)
    x = torch.tensor(scores, dtype=torch.float64)
    d = (x - x.min()) / (x.max() - x.min()) * 2 * lam
    assert torch.allclose(torch.tensor(a.values, dtype=torch.float64), s - d.mean() + d, atol=1e-12)
    assert sum(a.values) / 4 == pytest.approx(s, abs=1e-12)
    # outlier ratios (higher_is_better) reversed give the mirrored allocation: most outliers, least
    b = _alloc("owl_sparsity", scores, None, higher_is_better=True, sparsity=s, lamda=lam)
    assert b.values.index(min(b.values)) == 3
