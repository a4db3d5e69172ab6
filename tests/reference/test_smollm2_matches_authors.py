"""The same comparison as ``test_tiny_matches_authors.py`` on the real SmolLM2-135M (30 blocks, full
q/k/v/o weights: 26 M scored parameters per example), on 6 training and 3 validation examples of the
bundled arithmetic task on both sides, as the authors use one task on both sides.

Sign: layerif's ``helpful_sum = −("+VE" cell)``, ``top_helpful = −("TOP-25%")``, ``net_sum = −("ALL")``,
influence ``I[l, i] = −Σ_v IF_l[v, i]``.
"""

from __future__ import annotations

import pytest

from layerif_core.tasks import bundled_records
from reference import authors
from reference.conftest import as_text, reference_of, tokenize
from reference.layerif_side import BETA, MODES, run_layerif, text_task
from reference.tolerance import RTOL, assert_scores_equal, relative_error

pytestmark = pytest.mark.slow

MAX_TOKENS = 48
TOTAL = 150  # 5 experts per block on average, as examples/paper_route.yaml
TRAIN = [as_text(r) for r in bundled_records("arithmetic", "train")[:6]]
VAL = [as_text(r) for r in bundled_records("arithmetic", "validation")[:3]]
VARIANTS = [("helpful_sum", {}, "+VE"), ("top_helpful", {"fraction": 0.25}, "TOP-25%"),
            ("net_sum", {}, "ALL")]


@pytest.fixture(scope="module")
def reference(smollm2):
    model, tokenizer = smollm2
    assert max(len(ids) for ids in tokenize(tokenizer, TRAIN + VAL)) <= MAX_TOKENS  # nothing truncated
    return reference_of(model, tokenizer, TRAIN, VAL)


@pytest.fixture(scope="module")
def layerif(smollm2, tmp_path_factory):
    """layerif's result per (mode, aggregator); one run directory per mode, so the influence matrix
    is computed once per mode and aggregated three ways."""
    model, tokenizer = smollm2
    results = {}
    for mode in MODES:
        directory = tmp_path_factory.mktemp(f"smollm2-{mode}")
        task = text_task(directory, TRAIN, VAL)
        for aggregator, options, _ in VARIANTS:
            results[mode, aggregator] = run_layerif(
                directory / "runs", model, tokenizer, task, source="embedded:smollm2-135m",
                aggregator=aggregator, aggregator_options=options, total=TOTAL, mode=mode,
                max_length=MAX_TOKENS)
    return results


def test_reference_scores_30_blocks_of_attention_weights(smollm2, reference):
    params = authors.attention_parameters(smollm2[0])
    assert len(params) == 4 * 30 and sorted(reference.tables) == list(range(30))
    assert sum(p.numel() for p in params.values()) > 26e6


@pytest.mark.parametrize("mode", MODES)
def test_influence_matrix_matches(reference, layerif, mode):
    got = layerif[mode, "helpful_sum"].influence
    assert got.shape == (30, 6)
    assert relative_error(got, -reference.per_example()) <= RTOL


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("aggregator", "options", "cell"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_scores_and_experts_match(reference, layerif, mode, aggregator, options, cell):
    result = layerif[mode, aggregator]
    assert result.higher_is_better is False
    assert_scores_equal(result.scores, -reference.cell(cell))
    assert result.experts == authors.scale_values_final(reference.cell(cell).tolist(), TOTAL, BETA)
