"""Negative controls: the comparisons of ``test_tiny_matches_authors.py`` fail, by far more than their
tolerance, when layerif is asked for a plausible wrong variant of the authors' computation: the
harmful side instead of the helpful one, the answer tokens instead of all tokens, the summed instead of
the Hugging Face mean loss, the pads out of the loss instead of in it (and the reverse), and the
lower-index tie rule of the expert remainder."""

from __future__ import annotations

import pytest

from reference import authors
from reference.conftest import TRAIN_QA, VAL_QA, as_text, tokenize
from reference.layerif_side import BETA, allocate_experts
from reference.tolerance import WRONG, assert_scores_equal, relative_error


def test_side_harmful_sum_misses_the_positive_cell(tiny_reference, tiny_layerif):
    # layerif's sign: helpful_sum = −(+VE cell). The reverse experiment, harmful_sum, sums the other
    # side: it is the authors' entries > 0 (the ones the +VE cell deletes), not the +VE cell.
    harmful = tiny_layerif("harmful_sum")
    assert tiny_reference.cell("harmful").gt(0).any() and tiny_reference.cell("+VE").lt(0).all()
    assert relative_error(harmful.scores, -tiny_reference.cell("+VE")) > WRONG
    assert relative_error(harmful.scores, tiny_reference.cell("+VE")) > WRONG  # nor with the sign flipped
    assert_scores_equal(harmful.scores, tiny_reference.cell("harmful"))


def test_prompt_completion_data_split_like_the_whole_text():
    # (b) below compares prompt/completion records with the reference on whole texts: the character
    # tokenizer gives the same tokens either way, so only the loss tokens differ
    from layerif_core.testing import char_tokenizer

    tok = char_tokenizer()
    for record in TRAIN_QA + VAL_QA:
        split = tokenize(tok, [f"{record['question']} Answer: "])[0] + tokenize(tok, [record["answer"]])[0]
        assert split == tokenize(tok, [as_text(record)])[0]


def test_loss_tokens_all_match_and_completion_tokens_miss(tiny_reference, tiny_layerif):
    all_tokens = tiny_layerif("helpful_sum", data="qa", tokens="all")
    answer_only = tiny_layerif("helpful_sum", data="qa", tokens="completion")
    assert_scores_equal(all_tokens.scores, -tiny_reference.cell("+VE"))
    assert relative_error(answer_only.scores, -tiny_reference.cell("+VE")) > WRONG
    assert relative_error(answer_only.influence, -tiny_reference.per_example()) > WRONG


def test_summed_loss_misses_the_hf_mean_loss(tiny_reference, tiny_layerif):
    summed = tiny_layerif("helpful_sum", reduction="sum")
    assert relative_error(summed.scores, -tiny_reference.cell("+VE")) > WRONG
    assert relative_error(summed.influence, -tiny_reference.per_example()) > WRONG


def test_pads_out_of_the_loss_miss_the_authors_padding(tiny_reference_padded, tiny_layerif):
    # layerif's default loss is each example's own tokens: the same as the authors' padded example
    # with its pads masked out of the loss (right pads are no attention keys of the real tokens)
    own_tokens = tiny_layerif("helpful_sum")
    assert relative_error(own_tokens.scores, -tiny_reference_padded.cell("+VE")) > WRONG
    assert relative_error(own_tokens.influence, -tiny_reference_padded.per_example()) > WRONG


def test_pads_in_the_loss_miss_the_unpadded_reference(tiny_reference, tiny_layerif):
    padded = tiny_layerif("helpful_sum", padding="authors")
    assert relative_error(padded.scores, -tiny_reference.cell("+VE")) > WRONG


# LayerIF scores (layerif's sign) with layers of identical scores, so that fractional parts tie
TIES = [
    ([0.0, 1.0, 1.0], 6),  # shares 0, 1.5, 1.5: the one expert left goes to block 2, not block 1
    ([0.0, 2.0, 1.0, 2.0, 1.0, 2.0, 0.5, 1.0], 16),
    ([3.0, 3.0, 0.0, 3.0, 3.0, 1.0], 13),
]


@pytest.mark.parametrize(("scores", "total"), TIES, ids=[f"{len(s)}-blocks" for s, _ in TIES])
def test_tie_rule_higher_layer_index_first(tmp_path, scores, total):
    values = [-s for s in scores]  # the authors' sign
    higher = authors.scale_values_final(values, total, BETA, higher_index_first=True)
    lower = authors.scale_values_final(values, total, BETA, higher_index_first=False)
    assert higher != lower  # the tie rule decides this case
    got = allocate_experts(tmp_path, scores, total)
    assert sum(got) == total
    assert got == higher and got != lower
