"""The ``lora_ranks`` allocator: exact parameter budget, bounds and multiples (property tests), the
worse layer's larger rank, ties, constant scores, and bad options as one-line errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerif_core.errors import ConfigError, DataError
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores
from layerif_lora_ranks.allocator import LoraRankAllocator, RankBudget
from layerif_lora_ranks.options import RankOptions


def scores(values, higher_is_better: bool = False) -> LayerScores:
    return LayerScores(torch.tensor(values, dtype=torch.float32), higher_is_better, "test")


def ranks(values, budget: RankBudget | None = None, **options) -> list[int]:
    alloc = LoraRankAllocator(RankOptions(**options)).allocate(scores(values), budget=budget)
    return alloc.details["ranks"][next(iter(alloc.details["ranks"]))]


def grid(min_rank: int, max_rank: int | None, q: int) -> tuple[int, int | None]:
    lo = -(-min_rank // q) * q
    return lo, None if max_rank is None else max_rank // q * q


layer_scores = st.lists(st.sampled_from([0.0, 0.25, 1.0, 1.5, 2.0, 3.7, 10.0]), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(values=layer_scores, rank=st.integers(1, 24), min_rank=st.integers(1, 8),
       span=st.none() | st.integers(0, 40), q=st.sampled_from([1, 2, 4]),
       beta=st.sampled_from([0.5, 1.0, 3.0]))
def test_budget_exact_and_bounds_hold_for_equal_layers(values, rank, min_rank, span, q, beta):
    max_rank = None if span is None else min_rank + span
    lo, hi = grid(min_rank, max_rank, q)
    n = len(values)
    reachable = (hi is None or hi >= lo) and rank >= lo and (hi is None or rank <= hi) \
        and (n * (rank - lo)) % q == 0
    if not reachable:
        with pytest.raises(ConfigError):
            ranks(values, rank=rank, min_rank=min_rank, max_rank=max_rank, multiple_of=q, beta=beta)
        return
    got = ranks(values, rank=rank, min_rank=min_rank, max_rank=max_rank, multiple_of=q, beta=beta)
    assert sum(got) == n * rank
    assert all(r >= lo and r % q == 0 and (hi is None or r <= hi) for r in got)
    # a worse layer never gets a smaller rank
    for i in range(n):
        for j in range(n):
            if values[i] > values[j]:
                assert got[i] >= got[j], (values, got)


@settings(max_examples=200, deadline=None)
@given(costs=st.lists(st.sampled_from([0, 32, 48, 64, 96]), min_size=2, max_size=8),
       rank=st.integers(1, 16), q=st.sampled_from([1, 2, 4]), data=st.data())
def test_budget_exact_in_parameters_for_unequal_layers(costs, rank, q, data):
    values = data.draw(st.lists(st.floats(0, 5), min_size=len(costs), max_size=len(costs)))
    budget = RankBudget({"all": costs}, {"all": rank})
    if sum(costs) == 0:
        return
    try:
        got = ranks(values, budget, rank=rank, multiple_of=q)
    except ConfigError:  # only when no ranks on the grid q, 2q, ... meet the budget at all
        assert rank < q or not reachable([c for c in costs if c], q, rank * sum(costs))
        return
    assert sum(c * r for c, r in zip(costs, got, strict=True)) == rank * sum(costs)
    assert all(r == 0 if c == 0 else (r >= 1 and r % q == 0) for c, r in zip(costs, got, strict=True))


def reachable(costs: list[int], q: int, budget: int) -> bool:
    """Whether some ranks r_l in {q, 2q, ...} give Σ c_l r_l = budget (reachability by DP)."""
    sums = {0}
    for c in costs:
        sums = {s + c * r for s in sums for r in range(q, budget // c + 1, q) if s + c * r <= budget}
    return budget in sums


def test_worked_example_by_hand():
    # w = minmax([3, 1, 1, 2, 0.5, 3]) = [1, .2, .2, .6, 0, 1]; v = w^3; spare 48 - 6 = 42;
    # x = 1 + 42·v/Σv = [19.82, 1.15, 1.15, 5.06, 1, 19.82]; floors sum to 40, the 2 left go to the
    # pair with the largest remainder (.82 each)
    assert ranks([3, 1, 1, 2, 0.5, 3], rank=8) == [20, 1, 1, 5, 1, 20]
    # multiples of 4 from 4: x = 4 + 24·v/Σv, steps y = [2.69, .02, .02, .58, 0, 2.69]: the two
    # steps left go to the tied pair together
    assert ranks([3, 1, 1, 2, 0.5, 3], rank=8, min_rank=2, multiple_of=4) == [16, 4, 4, 4, 4, 16]


def test_worse_layer_gets_the_larger_rank_in_either_score_direction():
    assert ranks([0.1, 0.9, 0.5], rank=8, beta=1) == [1, 15, 8]
    alloc = LoraRankAllocator(RankOptions(rank=8, beta=1)).allocate(scores([0.1, 0.9, 0.5], True))
    assert alloc.details["ranks"]["all"] == [15, 1, 8]


def test_ties_stay_equal_when_exactness_allows():
    # x = [2.5, 2.5, 1]: Hamilton would give the one unit left to layer 0 alone ([3, 2, 1]); the
    # tied pair moves together, so the unit goes to the last layer
    assert ranks([1, 1, 0], rank=2, beta=1) == [2, 2, 2]
    # x = [3.67, 3.67, 3.67, 1]: two units left; Hamilton gives [4, 4, 3, 1]; the three tied layers
    # can only move together (3 units), so both go to the last layer
    assert ranks([5, 5, 5, 0], rank=3, beta=1) == [3, 3, 3, 3]


def test_tie_is_split_only_when_exactness_forces_it():
    # two layers, uniform rank 6 in multiples of 4: 12 = 4 + 8, no equal pair sums to 12
    assert ranks([1, 1], rank=6, multiple_of=4) == [8, 4]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), r=st.integers(1, 16), q=st.sampled_from([1, 2, 4]),
       value=st.floats(-100, 100), higher=st.booleans())
def test_constant_scores_give_the_uniform_ranks(n, r, q, value, higher):
    rank = r * q
    alloc = LoraRankAllocator(RankOptions(rank=rank, multiple_of=q, max_rank=rank + q)).allocate(
        scores([value] * n, higher))
    assert alloc.details["ranks"]["all"] == [rank] * n


def test_max_rank_holds_the_worst_layers_and_the_rest_share_the_budget():
    # x = min(7, 1 + k·v), v = [0, .5, 1, 1]: k = 6.4 puts layers 2, 3 above 7; held there, layer 1
    # takes the 20 - 14 - 2 = 4 left: k = 8, x = [1, 5, 7, 7]
    assert ranks([0, 1, 2, 2], rank=5, max_rank=7, beta=1) == [1, 5, 7, 7]


def test_per_module_type_keeps_every_type_budget():
    budget = RankBudget({"q": [32, 32, 32], "up": [48, 48, 48]}, {"q": 4, "up": 8})
    alloc = LoraRankAllocator(RankOptions(rank={"q": 4, "up": 8}, per_module_type=True, beta=1)
                              ).allocate(scores([0, 1, 2]), budget=budget)
    r = alloc.details["ranks"]
    assert sum(r["q"]) == 12 and sum(r["up"]) == 24
    assert alloc.details["params"] == alloc.details["budget"] == 4 * 96 + 8 * 144


def test_temperature_flattens_towards_uniform():
    sharp = ranks([0, 1, 2, 3, 4], rank=8, temperature=0.5)
    flat = ranks([0, 1, 2, 3, 4], rank=8, temperature=20)
    assert max(flat) - min(flat) < max(sharp) - min(sharp)


@pytest.mark.parametrize("options,words", [
    ({"min_rank": 0}, "min_rank"),
    ({"max_rank": 0}, "max_rank"),
    ({"min_rank": 4, "max_rank": 2}, "below min_rank"),
    ({"rank": {"q_proj": 4}}, "per_module_type"),
    ({"rank": 0}, "rank"),
    ({"ranks": 4}, "did you mean 'rank'"),
])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(ConfigError) as exc:
        get_registry().get("allocator", "lora_ranks").options(options)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("options,words", [
    ({"rank": 2, "min_rank": 4}, "below min_rank 4 in every layer"),
    ({"rank": 16, "max_rank": 8}, "above max_rank 8"),
    ({"rank": 6, "multiple_of": 4}, "multiples of 4"),
    ({"rank": 8, "min_rank": 5, "max_rank": 7, "multiple_of": 4}, "no multiple of 4"),
])
def test_unreachable_budgets_are_one_line_errors(options, words):
    with pytest.raises(ConfigError) as exc:
        ranks([0, 1, 2], **options)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_scores_of_another_model_are_refused():
    budget = RankBudget({"all": [32] * 4}, {"all": 8})
    with pytest.raises(DataError, match="3 layers"):
        ranks([0, 1, 2], budget, rank=8)
