"""Every aggregator against values computed by hand from its definition (architecture §4 signs)."""

from __future__ import annotations

import pytest
import torch

from layerif_core.registry import get_registry

# framework sign: positive = helpful; the paper's sign is −I
INFLUENCE = torch.tensor([[1.0, -2.0, 3.0, -4.0],
                          [0.0, 0.5, -0.5, 0.0]])

# every LayerIF variant: higher = more influence flows through the layer = less mature
CASES = [
    ("helpful_sum", {}, [1 + 3, 0.5], "helpful"),         # Σ max(I, 0): the paper's +VE
    ("harmful_sum", {}, [2 + 4, 0.5], "harmful"),         # Σ max(−I, 0): the reverse experiment
    ("net_sum", {}, [1 - 2 + 3 - 4, 0.0], "net"),         # Σ I: the paper's ALL
    ("abs_sum", {}, [10.0, 1.0], "both"),                 # Σ |I|
    ("top_helpful", {}, [3.0, 0.5], "helpful"),           # ⌈0.25·4⌉ = 1 largest I: TOP-25%
    ("top_helpful", {"fraction": 0.5}, [3 + 1, 0.5 + 0.0], "helpful"),
    ("top_harmful", {}, [4.0, 0.5], "harmful"),           # 1 largest −I
    ("top_harmful", {"fraction": 0.5}, [4 + 2, 0.5 + 0.0], "harmful"),
]


@pytest.mark.parametrize(("name", "options", "expected", "side"), CASES)
def test_aggregator_values_and_direction(name, options, expected, side):
    agg = get_registry().build("aggregator", name, options)
    torch.testing.assert_close(agg(INFLUENCE), torch.tensor(expected))
    assert agg.higher_is_better is False and agg.side == side


@pytest.mark.parametrize("name", ["positive_sum", "top_fraction", "sum"])
def test_a_config_naming_a_removed_aggregator_is_refused(name):
    from layerif_core.config import load_config
    from layerif_core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"aggregator '{name}' was removed: it summed the harmful "
                                          r"side.*use (helpful|top_helpful|net_sum)"):
        load_config(data={"tasks": [{"name": "t", "train": {"source": "x.jsonl"},
                                     "validation": {"source": "x.jsonl"}}],
                          "scorer": {"aggregator": {"name": name}}})


def _one_example_against_itself(tmp_path, aggregator: str):
    """One train example scored against itself: its influence ⟨g, g⟩ is helpful in every layer."""
    from conftest import make_ctx
    from layerif_core.pipeline import compute_layer_scores

    data = tmp_path / "one.jsonl"
    data.write_text('{"q": "What is the capital of France?", "a": "Paris"}\n')
    split = {"source": str(data), "prompt": "{q} ", "completion": "{a}"}
    ctx = make_ctx(tmp_path, batch_size=1, scorer={"estimator": {"name": "grad_dot"},
                                                   "aggregator": {"name": aggregator}},
                   tasks=[{"name": "same", "train": split, "validation": split}])
    return compute_layer_scores(ctx)["same"]


def test_an_empty_side_is_flagged(tmp_path, caplog):
    """No influence is harmful, so harmful_sum is 0 in every layer: the user is told it ranks
    nothing; scores.json records the side summed and the shares of each side."""
    with caplog.at_level("WARNING", logger="layerif"):
        scores = _one_example_against_itself(tmp_path, "harmful_sum")
    assert scores.details["side"] == "harmful" and scores.details["harmful_fraction"] == 0
    assert scores.details["helpful_fraction"] == 1 and bool((scores.values == 0).all())
    assert "no influence is harmful through any layer, so harmful_sum is 0 everywhere" in caplog.text


def test_the_helpful_side_of_the_same_influences_ranks_layers(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="layerif"):
        scores = _one_example_against_itself(tmp_path, "helpful_sum")
    assert scores.details["side"] == "helpful" and bool((scores.values > 0).all())
    assert "ranks no layer" not in caplog.text
