"""layerif's "+VE", "TOP-25%" and "ALL" scores, influence matrix and expert counts on a tiny
random-init Llama (3 blocks, float32) against the authors' procedure restated in ``authors.py``.

Sign: the reference keeps the authors' ``IF = −I`` (negative = helpful); layerif's ``I`` is positive
when helpful. So ``helpful_sum = −("+VE" cell)``, ``top_helpful = −("TOP-25%" cell)``,
``net_sum = −("ALL" cell)``, and layerif's influence matrix ``I[l, i] = −Σ_v IF_l[v, i]``.
"""

from __future__ import annotations

import pytest

from layerif_core.testing import tiny_model
from reference import authors
from reference.conftest import TINY_SEED, TINY_TOTAL
from reference.layerif_side import BETA, MODES
from reference.tolerance import RTOL, assert_scores_equal, relative_error

# layerif aggregator (with options) → the notebook cell it must reproduce, negated
VARIANTS = [("helpful_sum", {}, "+VE"), ("top_helpful", {"fraction": 0.25}, "TOP-25%"),
            ("net_sum", {}, "ALL")]
VARIANT_IDS = [v[0] for v in VARIANTS]


def test_reference_scores_each_blocks_attention_weights():
    names = list(authors.attention_parameters(tiny_model(seed=TINY_SEED)))
    assert [authors.block_of(n) for n in names] == [0] * 4 + [1] * 4 + [2] * 4
    assert {n.split(".")[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(n.endswith(".weight") for n in names)


def test_tiny_examples_discriminate_the_cells(tiny_reference):
    # what makes the comparisons below discriminating: helpful and harmful influences in the same
    # blocks, so "+VE" (drop the entries > 0) is not "ALL", and the three cells give three different
    # expert vectors
    per_example = tiny_reference.per_example()
    assert (per_example < 0).any(dim=1).all() and (per_example > 0).any(dim=1).sum() >= 2
    assert relative_error(tiny_reference.cell("+VE"), tiny_reference.cell("ALL")) > 1e-3
    vectors = {tuple(authors.scale_values_final(tiny_reference.cell(c).tolist(), TINY_TOTAL, BETA))
               for c in ("+VE", "TOP-25%", "ALL")}
    assert len(vectors) == 3


@pytest.mark.parametrize("mode", MODES)
def test_influence_matrix_is_minus_the_if_table_summed_over_validation(tiny_reference, tiny_layerif,
                                                                       mode):
    got = tiny_layerif("helpful_sum", mode=mode).influence
    expected = -tiny_reference.per_example()
    assert got.shape == expected.shape == (3, 8)
    assert relative_error(got, expected) <= RTOL


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("aggregator", "options", "cell"), VARIANTS, ids=VARIANT_IDS)
def test_layer_scores_equal_the_authors_cell(tiny_reference, tiny_layerif, mode, aggregator, options,
                                             cell):
    result = tiny_layerif(aggregator, mode=mode, **options)
    assert result.higher_is_better is False  # more influence through a layer = less mature
    assert_scores_equal(result.scores, -tiny_reference.cell(cell))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("aggregator", "options", "cell"), VARIANTS, ids=VARIANT_IDS)
def test_experts_equal_scale_values_final(tiny_reference, tiny_layerif, mode, aggregator, options,
                                          cell):
    expected = authors.scale_values_final(tiny_reference.cell(cell).tolist(), TINY_TOTAL, BETA)
    assert tiny_layerif(aggregator, mode=mode, **options).experts == expected
