"""The true Fisher's sampled labels (``layerif_core.losses.sample_labels``)."""

import math

import torch

from layerif_core.data import IGNORE, pad_rows
from layerif_core.losses import sample_labels


def batch_of(rows, labels):
    return pad_rows([r.tolist() for r in rows], [x.tolist() for x in labels], 0, list(range(len(rows))))


def test_draws_follow_the_softmax():
    # one example of 6001 tokens whose 6000 labelled positions share one predictive distribution
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
