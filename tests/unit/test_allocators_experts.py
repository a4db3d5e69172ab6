"""Expert allocators: exact total, minimum per layer, worse layers get more, Hamilton rounding,
uniform control, bad budgets."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerif_core.errors import ConfigError
from layerif_core.registry import load_registry
from layerif_core.results import LayerScores

REG = load_registry(entry_points=False)


def _alloc(name: str, scores: list[float], higher_is_better: bool = False, **options):
    s = LayerScores(torch.tensor(scores, dtype=torch.float32), higher_is_better, "test")
    return REG.build("allocator", name, options).allocate(s)


def _hamilton(shares: list[Fraction], units: int, higher_first: bool = True) -> list[int]:
    """Largest-remainder rounding in exact rational arithmetic (ties: the higher index first, as the
    LayerIF authors' scale_values_final; or the lower)."""
    total = sum(shares)
    quotas = [s / total * units for s in shares]
    base = [q.numerator // q.denominator for q in quotas]
    left = units - sum(base)
    order = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - base[i]),
                                                      -i if higher_first else i))
    for i in order[:left]:
        base[i] += 1
    return base


scores_st = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(scores=scores_st, per_layer=st.integers(1, 6), minimum=st.integers(1, 3),
       beta=st.floats(0.5, 4), higher=st.booleans())
def test_total_is_exact_and_every_layer_has_the_minimum(scores, per_layer, minimum, beta, higher):
    n = len(scores)
    total = n * max(per_layer, minimum)
    a = _alloc("alphalora_experts", scores, higher, total=total, min_per_layer=minimum, beta=beta)
    assert a.kind == "experts"
    assert sum(a.values) == total
    assert min(a.values) >= minimum
    assert all(isinstance(v, int) for v in a.values)


@settings(max_examples=60, deadline=None)
@given(scores=scores_st, higher=st.booleans())
def test_a_worse_layer_never_gets_fewer_experts(scores, higher):
    a = _alloc("alphalora_experts", scores, higher, total=5 * len(scores), beta=2.5)
    worse = [-float(torch.tensor(s)) if higher else float(torch.tensor(s)) for s in scores]
    margin = 1e-9 * (max(worse) - min(worse))  # below this, min-max rounding may tie two layers
    for i in range(len(scores)):
        for j in range(len(scores)):
            if worse[i] > worse[j] + margin:
                assert a.values[i] >= a.values[j]


def test_matches_the_formula_with_hamilton_rounding():
    scores = [0.3, 2.0, 1.1, 0.0, 0.7, 1.6, 0.2]  # higher = worse (more influence flows)
    total, m, beta = 30, 2, 3.0
    a = _alloc("alphalora_experts", scores, total=total, min_per_layer=m, beta=beta)
    lo, hi = Fraction(min(scores)), Fraction(max(scores))
    w = [(Fraction(s) - lo) / (hi - lo) for s in scores]
    expected = [m + e for e in _hamilton([x ** 3 for x in w], total - len(scores) * m)]
    assert a.values == expected


def test_remainder_ties_go_to_the_higher_layer_index():
    # layers 1 and 2 tie: 3 experts beyond the minimum split 1.5 / 1.5, the one left goes to layer 2
    scores = [0.0, 1.0, 1.0]
    a = _alloc("alphalora_experts", scores, total=6, beta=3.0)
    assert a.values == [1, 2, 3]
    w = [Fraction(0), Fraction(1), Fraction(1)]
    assert a.values == [1 + e for e in _hamilton(w, 3)]
    assert a.values != [1 + e for e in _hamilton(w, 3, higher_first=False)]


def test_higher_is_better_flips_the_direction():
    scores = [1.0, 5.0, 3.0, 2.0]
    worse_is_high = _alloc("alphalora_experts", scores, False, total=16)
    better_is_high = _alloc("alphalora_experts", [-s for s in scores], True, total=16)
    assert worse_is_high.values == better_is_high.values
    assert worse_is_high.values.index(max(worse_is_high.values)) == 1


def test_large_temperature_approaches_uniform_and_small_concentrates():
    scores = [0.1, 0.4, 0.5, 0.9, 1.0, 0.3]
    flat = _alloc("alphalora_experts", scores, total=24, beta=1.0, temperature=1e3)
    sharp = _alloc("alphalora_experts", scores, total=24, beta=1.0, temperature=0.02)
    # w^(1/1000) ≈ 1 for every layer but the best one (w = 0): 18 extra over 5 layers
    assert sorted(flat.values) == [1, 4, 4, 5, 5, 5]
    assert sharp.values[4] == 24 - 5  # all extra experts go to the worst layer


def test_constant_scores_give_the_uniform_allocation():
    a = _alloc("alphalora_experts", [2.0] * 8, total=32)
    assert a.values == [4] * 8


def test_uniform_control_has_the_same_total():
    u = _alloc("uniform_experts", [0.0] * 7, total=30)
    assert sum(u.values) == 30 and sorted(u.values) == [4, 4, 4, 4, 4, 5, 5]
    assert u.details["top_k"] == [2] * 7


def test_default_total_is_four_per_layer_and_top_k_follows_the_counts():
    a = _alloc("alphalora_experts", [0.0, 0.0, 0.0, 10.0], beta=1.0)
    assert a.values == [1, 1, 1, 13]
    assert a.details["top_k"] == [1, 1, 1, 2]


def test_total_below_layers_times_minimum_is_an_error():
    with pytest.raises(ConfigError, match="smaller than 4 layers x min_per_layer 2"):
        _alloc("alphalora_experts", [1.0, 2.0, 3.0, 4.0], total=7, min_per_layer=2)
    with pytest.raises(ConfigError, match="smaller than"):
        _alloc("uniform_experts", [1.0, 2.0, 3.0], total=2)


def test_raw_worseness_must_be_non_negative_without_normalisation():
    a = _alloc("alphalora_experts", [1.0, 3.0], total=6, normalize=False, beta=1.0)
    assert a.values == [2, 4]  # 4 extra split 1:3
    with pytest.raises(ConfigError, match="normalize"):
        _alloc("alphalora_experts", [-1.0, 3.0], total=6, normalize=False)


def test_given_allocation_checks_its_length():
    assert _alloc("given_experts", [0.0, 0.0], values=[3, 1]).values == [3, 1]
    with pytest.raises(ConfigError, match="one per layer"):
        _alloc("given_experts", [0.0, 0.0, 0.0], values=[3, 1])
