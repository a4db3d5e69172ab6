"""The authors' two remaining quirks (PAPER.md §1 "Loss"): their tokenisation pads every example of
a split with EOS to the split's longest and keeps the pads in the loss (``labels = input_ids``, the
pads masked only as attention keys), and their model runs in bfloat16. layerif's
``scorer.loss.padding: authors`` and a bfloat16 model against the restatement in ``authors.py``
(``pad_split``, ``example_gradients`` with the model's dtype, ``datainf_if_tables_in_their_dtypes``)
on the tiny Llama of ``test_tiny_matches_authors.py``. Signs as there: layerif's I = −IF."""

from __future__ import annotations

import pytest

from reference import authors
from reference.conftest import TINY_TOTAL, TRAIN_QA, as_text
from reference.layerif_side import BETA, MODES
from reference.tolerance import BF16_RTOL, RTOL, WRONG, assert_scores_equal, relative_error

VARIANTS = [("helpful_sum", {}, "+VE"), ("top_helpful", {"fraction": 0.25}, "TOP-25%"),
            ("net_sum", {}, "ALL")]
VARIANT_IDS = [v[0] for v in VARIANTS]


def test_the_tiny_split_has_examples_of_different_lengths():
    # what makes the padding matter: all but the longest training example get pads
    lengths = {len(as_text(r)) for r in TRAIN_QA}
    assert len(lengths) == len(TRAIN_QA) and max(lengths) <= authors.MAX_LENGTH


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("aggregator", "options", "cell"), VARIANTS, ids=VARIANT_IDS)
def test_padded_scores_and_experts_equal_the_authors(tiny_reference_padded, tiny_layerif, mode,
                                                     aggregator, options, cell):
    result = tiny_layerif(aggregator, mode=mode, padding="authors", **options)
    assert_scores_equal(result.scores, -tiny_reference_padded.cell(cell))
    expected = authors.scale_values_final(tiny_reference_padded.cell(cell).tolist(), TINY_TOTAL, BETA)
    assert result.experts == expected


@pytest.mark.parametrize("mode", MODES)
def test_padded_influence_matrix_equals_the_authors(tiny_reference_padded, tiny_layerif, mode):
    got = tiny_layerif("helpful_sum", mode=mode, padding="authors").influence
    assert relative_error(got, -tiny_reference_padded.per_example()) <= RTOL


@pytest.mark.parametrize("mode", MODES)
def test_bf16_run_equals_the_authors_bf16_run_within_bf16_rounding(tiny_reference_bf16, tiny_layerif,
                                                                   mode):
    result = tiny_layerif("helpful_sum", mode=mode, padding="authors", dtype="bfloat16")
    expected = -tiny_reference_bf16.cell("+VE")
    assert ((result.scores - expected).abs() / expected.abs()).max() <= BF16_RTOL
    assert relative_error(result.influence, -tiny_reference_bf16.per_example()) <= BF16_RTOL
    assert result.experts == authors.scale_values_final(tiny_reference_bf16.cell("+VE").tolist(),
                                                        TINY_TOTAL, BETA)


def test_the_bf16_run_is_not_the_float32_run(tiny_reference_padded, tiny_layerif):
    # the tolerance above tells bf16 from float32: the bf16 model's scores miss the float32
    # reference by more than WRONG (and more than BF16_RTOL)
    result = tiny_layerif("helpful_sum", padding="authors", dtype="bfloat16")
    assert relative_error(result.scores, -tiny_reference_padded.cell("+VE")) > max(WRONG, BF16_RTOL)
