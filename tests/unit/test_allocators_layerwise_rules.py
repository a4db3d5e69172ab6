"""dlp_sparsity and atp_sparsity: exact weighted mean, the span the authors set, direction, the
authors' α table and β bound, and the errors that name the fix."""

from __future__ import annotations

import pytest
import torch

from layerif_core.allocators.sparsity import beta_grid, max_beta
from layerif_core.errors import ConfigError
from layerif_core.registry import load_registry
from layerif_core.results import LayerScores


def _alloc(name: str, scores: list[float], weights: list[float] | None = None,
           higher_is_better: bool = False, **options):
    reg = load_registry(entry_points=False)
    s = LayerScores(torch.tensor(scores), higher_is_better, "test")
    return reg.build("allocator", name, options).allocate(s, weights)


def _case(seed: int, n: int = 10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g).tolist(), (torch.rand(n, generator=g) * 9 + 1).tolist()


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


@pytest.mark.parametrize("seed", range(4))
def test_dlp_weighted_mean_is_exact_and_span_is_two_alpha(seed):
    scores, weights = _case(seed)
    a = _alloc("dlp_sparsity", scores, weights, sparsity=0.6, alpha=0.1)
    assert _weighted_mean(a.values, weights) == pytest.approx(0.6, abs=1e-12)
    assert max(a.values) - min(a.values) == pytest.approx(0.2, abs=1e-12)
    # a larger statistic (higher_is_better False) is pruned more: the order of the scores
    assert sorted(range(10), key=lambda i: a.values[i]) == sorted(range(10), key=lambda i: scores[i])


def test_dlp_plain_mean_when_not_weighted():
    scores, weights = _case(9)
    a = _alloc("dlp_sparsity", scores, weights, sparsity=0.5, alpha=0.05, weighted=False)
    assert sum(a.values) / len(a.values) == pytest.approx(0.5, abs=1e-12)
    assert _weighted_mean(a.values, weights) != pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize(("sparsity", "alpha"), [(0.1, 0.06), (0.5, 0.04), (0.6, 0.1), (0.7, 0.15),
                                                 (0.8, 0.12)])
def test_dlp_alpha_defaults_to_the_authors_table(sparsity, alpha):
    a = _alloc("dlp_sparsity", [0.0, 1.0, 3.0], sparsity=sparsity)
    assert a.details["alpha"] == alpha
    assert a.values[2] - a.values[0] == pytest.approx(2 * alpha, abs=1e-12)


def test_dlp_without_a_table_entry_asks_for_alpha():
    with pytest.raises(ConfigError, match=r"no alpha for sparsity 0.05 .*set allocation.options.alpha"):
        _alloc("dlp_sparsity", [0.0, 1.0], sparsity=0.05)


def test_dlp_range_outside_unit_interval_says_lower_alpha():
    with pytest.raises(ConfigError, match=r"outside \[0, 1\); lower alpha"):
        _alloc("dlp_sparsity", [0.0, 1.0, 2.0], sparsity=0.9, alpha=0.2)


def test_dlp_equal_scores_are_uniform():
    a = _alloc("dlp_sparsity", [2.0, 2.0, 2.0], sparsity=0.7)
    assert a.values == pytest.approx([0.7, 0.7, 0.7], abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_atp_weighted_mean_is_exact_and_steps_are_beta(seed):
    scores, weights = _case(seed)
    a = _alloc("atp_sparsity", scores, weights, sparsity=0.5, beta=0.02)
    assert _weighted_mean(a.values, weights) == pytest.approx(0.5, abs=1e-12)
    assert [b - c for b, c in zip(a.values[1:], a.values[:-1], strict=True)] == pytest.approx([0.02] * 9)


def test_atp_does_not_read_the_scores():
    a = _alloc("atp_sparsity", [3.0, 1.0, 2.0], sparsity=0.5, beta=0.1)
    b = _alloc("atp_sparsity", [0.0, 0.0, 9.0], higher_is_better=True, sparsity=0.5, beta=0.1)
    assert a.values == b.values == pytest.approx([0.4, 0.5, 0.6])


@pytest.mark.parametrize(("n", "s"), [(30, 0.7), (32, 0.5), (24, 0.2)])
def test_atp_bound_with_equal_blocks_is_the_authors(n, s):
    assert max_beta(s, torch.ones(n, dtype=torch.float64)) == pytest.approx(
        min(2 * s / (n - 1), 2 * (1 - s) / (n - 1)), rel=1e-12)


def test_atp_beyond_the_bound_names_the_largest_legal_beta():
    with pytest.raises(ConfigError, match=r"beta 0.6 .*over 3 layers; use beta <= 0.5\b"):
        _alloc("atp_sparsity", [0.0, 1.0, 2.0], sparsity=0.5, beta=0.6)


def test_atp_grid_ends_at_the_bound():
    grid = beta_grid(0.7, torch.ones(30, dtype=torch.float64))
    assert grid[0] == 0.002 and grid[-1] <= 0.6 / 29 < grid[-1] + 0.002
    assert len(grid) == 10
