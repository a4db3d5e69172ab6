"""The true Fisher's sampled labels (``layerif_core.losses.sample_labels``)."""

import math

import torch

from layerif_core.data import IGNORE, pad_rows
from layerif_core.losses import race_block, sample_labels


def batch_of(rows, labels):
    return pad_rows([r.tolist() for r in rows], [x.tolist() for x in labels], 0, list(range(len(rows))))


def test_draws_follow_the_softmax():
    # one example of 6001 tokens whose 6000 labelled positions share one predictive distribution;
    # 6 tokens make 2 blocks of 3 (race_block), so both levels of the race are exercised
    assert race_block(6) == 3
    probs = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.50, 0.0])
    ids = torch.arange(6001) % 5
    batch = batch_of([ids], [ids.clone()])
    logits = probs.clamp(min=1e-30).log().expand(1, 6000, 6)
    drawn = sample_labels(logits, batch, seed=3)[0, 1:]
    counts = torch.bincount(drawn, minlength=6).double()
    expected = probs.double() * 6000
    chi2 = float(((counts[:5] - expected[:5]) ** 2 / expected[:5]).sum())
    assert counts[5] == 0  # a zero-probability token is never drawn
    assert chi2 < 20.5, (counts, expected)  # chi-square, 4 dof, p = 0.0004
    assert math.isclose(float(counts.sum()), 6000)


def test_an_examples_draw_does_not_depend_on_its_batch():
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 50, (n,), generator=gen) for n in (9, 14, 6)]
    labels = [r.clone() for r in rows]
    labels[1][:5] = IGNORE  # a prompt without labels
    logits = torch.randn(3, 13, 50, generator=gen)
    together = sample_labels(logits, batch_of(rows, labels), seed=1)
    for b, row in enumerate(rows):
        alone = sample_labels(logits[b:b + 1, : len(row) - 1], batch_of([row], [labels[b]]), seed=1)
        assert torch.equal(alone[0], together[b, : len(row)])
    assert (together[1, :5] == IGNORE).all() and (together[0, 9:] == IGNORE).all()
    assert not torch.equal(together, sample_labels(logits, batch_of(rows, labels), seed=2))


def test_a_non_finite_logit_keeps_that_examples_data_labels():
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 50, (10,), generator=gen) for _ in range(2)]
    batch = batch_of(rows, [r.clone() for r in rows])
    logits = torch.randn(2, 9, 50, generator=gen)
    clean = sample_labels(logits, batch, seed=0)
    logits[0, 4, 7] = float("nan")
    got = sample_labels(logits, batch, seed=0)
    assert torch.equal(got[0], batch.labels[0])
    assert torch.equal(got[1], clean[1])


def test_a_small_change_of_the_distribution_changes_few_draws():
    # a bf16 model and its float32 twin should draw the same labels where they predict alike: the
    # share of changed draws stays within a small multiple of the total-variation distance
    # (inverse-CDF sampling over the vocabulary changes 16x the distance here)
    gen = torch.Generator().manual_seed(0)
    vocab, n = 3000, 2000
    ids = torch.randint(0, vocab, (n + 1,), generator=gen)
    batch = batch_of([ids], [ids.clone()])
    logits = torch.randn(1, n, vocab, generator=gen) * 3
    near = logits + 0.05 * torch.randn(1, n, vocab, generator=gen)
    tv = 0.5 * float((logits.softmax(-1) - near.softmax(-1)).abs().sum(-1).mean())
    changed = float((sample_labels(logits, batch, 0) != sample_labels(near, batch, 0)).float().mean())
    assert 0.005 < tv < 0.05
    assert changed <= 3 * tv, (changed, tv)


def test_mean_reduction_is_the_hugging_face_loss_of_each_example():
    """labels = input_ids, one example per forward: the HF loss is the mean over its T − 1 predicted
    tokens; batched and right-padded, each row still gets its own example's mean."""
    from conftest import tiny_model
    from layerif_core.losses import sequence_losses

    model = tiny_model("llama").eval()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 50, (n,), generator=gen) for n in (7, 12, 4)]
    batch = batch_of(rows, [r.clone() for r in rows])
    with torch.no_grad():
        got = sequence_losses(model, batch, reduction="mean")
        summed = sequence_losses(model, batch)
        for b, row in enumerate(rows):
            hf = model(input_ids=row[None], labels=row[None]).loss
            torch.testing.assert_close(got[b], hf, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(summed[b], hf * (len(row) - 1), rtol=1e-5, atol=1e-5)


def test_mean_reduction_with_the_authors_padding_is_the_hf_loss_of_the_padded_example():
    """The authors' padding: each example right-padded with EOS to the longest, attention mask 0 on
    the pads, labels = input_ids (pads included): the HF loss is the mean over all T − 1 positions,
    pads predicting EOS; computed here as in their code, one padded example per forward."""
    from conftest import tiny_model
    from layerif_core.data import pad_like_authors
    from layerif_core.losses import sequence_losses

    model = tiny_model("llama").eval()
    eos = model.config.eos_token_id
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 50, (n,), generator=gen).tolist() for n in (7, 12, 4)]
    ids, labels, attended = pad_like_authors(rows, [list(r) for r in rows], eos)
    batch = pad_rows(ids, labels, 0, [0, 1, 2], attended)
    with torch.no_grad():
        got = sequence_losses(model, batch, reduction="mean")
        for b, row in enumerate(rows):
            x = torch.tensor([row + [eos] * (12 - len(row))])
            mask = torch.tensor([[1] * len(row) + [0] * (12 - len(row))])
            hf = model(input_ids=x, attention_mask=mask, labels=x).loss
            torch.testing.assert_close(got[b], hf, rtol=1e-5, atol=1e-6)
        own = sequence_losses(model, batch_of([torch.tensor(r) for r in rows],
                                              [torch.tensor(r) for r in rows]), reduction="mean")
    padded = [0, 2]  # the longest row (12 tokens) has no pad
    assert (got[padded] - own[padded]).abs().min() > 1e-3 and torch.allclose(got[1], own[1])
