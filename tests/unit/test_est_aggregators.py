"""Every aggregator against values computed by hand from its definition (architecture §4 signs)."""

from __future__ import annotations

import pytest
import torch

from layerif_core.registry import get_registry

# framework sign: positive = helpful; the paper's sign is −I
INFLUENCE = torch.tensor([[1.0, -2.0, 3.0, -4.0],
                          [0.0, 0.5, -0.5, 0.0]])

# −I = [[-1, 2, -3, 4], [0, -0.5, 0.5, 0]]
CASES = [
    ("positive_sum", {}, [2 + 4, 0.5], False),        # Σ max(−I, 0)
    ("helpful_sum", {}, [1 + 3, 0.5], True),          # Σ max(I, 0)
    ("sum", {}, [-1 + 2 - 3 + 4, 0.0], False),        # Σ −I
    ("abs_sum", {}, [10.0, 1.0], False),              # Σ |I|
    ("mean", {}, [2 / 4, 0.0], False),                # mean −I
    ("positive_fraction", {}, [2 / 4, 1 / 4], False),  # share with −I > 0
    ("top_fraction", {}, [4.0, 0.5], False),          # ⌈0.25·4⌉ = 1 largest −I
    ("top_fraction", {"fraction": 0.5}, [4 + 2, 0.5 + 0.0], False),
]


@pytest.mark.parametrize(("name", "options", "expected", "higher_is_better"), CASES)
def test_aggregator_values_and_direction(name, options, expected, higher_is_better):
    agg = get_registry().build("aggregator", name, options)
    torch.testing.assert_close(agg(INFLUENCE), torch.tensor(expected))
    assert agg.higher_is_better is higher_is_better


def test_scores_equal_in_every_layer_are_flagged(tmp_path, caplog):
    """One train example scored against itself: every influence ⟨g, g⟩ is helpful, so the paper's
    positive_sum is 0 in every layer; the user is told it ranks nothing, and why."""
    from conftest import make_ctx
    from layerif_core.pipeline import compute_layer_scores

    data = tmp_path / "one.jsonl"
    data.write_text('{"q": "What is the capital of France?", "a": "Paris"}\n')
    split = {"source": str(data), "prompt": "{q} ", "completion": "{a}"}
    ctx = make_ctx(tmp_path, batch_size=1, scorer={"estimator": {"name": "grad_dot"}},
                   tasks=[{"name": "same", "train": split, "validation": split}])
    with caplog.at_level("WARNING", logger="layerif"):
        scores = compute_layer_scores(ctx)["same"]
    assert scores.details["harmful_fraction"] == 0 and bool((scores.values == 0).all())
    assert "positive_sum is 0 in every layer (no train example is harmful" in caplog.text
