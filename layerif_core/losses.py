"""Per-sequence losses: ``L(z)`` is the summed token cross-entropy of a sequence (architecture §4)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from layerif_core.data import IGNORE, Batch
from layerif_core.errors import NumericalError


def sequence_losses(model: torch.nn.Module, batch: Batch, labels: torch.Tensor | None = None,
                    sample_seed: int | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of each sequence, ``[B]`` float32.

    ``labels`` overrides ``batch.labels`` (e.g. labels sampled from the model for the true Fisher);
    positions equal to ``-100`` are not counted. With ``sample_seed`` the targets are drawn from the
    model's own predictive distribution of this same forward (see :func:`sample_labels`).
    """
    # logits: [B, T, V]; labels: [B, T] aligned with input_ids (position t predicts t+1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
    if sample_seed is not None:
        labels = sample_labels(logits.detach(), batch, sample_seed)
    target = (batch.labels if labels is None else labels)[:, 1:]
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=IGNORE, reduction="none")
    return tok.view(target.shape).sum(dim=1)


def check_finite(losses: torch.Tensor, batch: Batch, split: str) -> None:
    """Stop with the index of the first example whose loss is NaN or infinite."""
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = int(batch.index[bad.nonzero()[0, 0].item()])
        raise NumericalError(f"loss of example {idx} of '{split}' is {losses[bad][0].item()}; "
                             "check that example (and the model's dtype: try float32); no scores "
                             "were written.")


def example_seed(ids: torch.Tensor, seed: int) -> int:
    """A sampling seed fixed by an example's tokens and the run seed (not by its batch or position)."""
    digest = hashlib.blake2b(ids.cpu().numpy().tobytes(), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


def sample_labels(logits: torch.Tensor, batch: Batch, seed: int) -> torch.Tensor:
    """Targets drawn from ``softmax(logits)`` where the data has a label (the true Fisher's labels).

    ``logits`` is ``[B, T-1, V]`` (position t predicts t+1). Each row is sampled with a generator
    seeded by :func:`example_seed`, so the draw of an example does not depend on the batch size or
    on the order of the train set. Returns ``[B, T]`` labels aligned with ``input_ids``.
    """
    labels = torch.full_like(batch.labels, IGNORE)
    probs = torch.softmax(logits, dim=-1)
    for b in range(logits.shape[0]):
        keep = batch.labels[b, 1:] != IGNORE
        if not keep.any():
            continue
        if not torch.isfinite(logits[b][keep]).all():  # keep the data labels: its loss is then
            labels[b] = batch.labels[b]  # non-finite too, and check_finite names the example
            continue
        ids = batch.input_ids[b][batch.attention_mask[b].bool()]
        gen = torch.Generator(device=probs.device).manual_seed(example_seed(ids, seed))
        drawn = torch.multinomial(probs[b][keep], 1, generator=gen).squeeze(1)
        labels[b, 1:][keep] = drawn
    return labels
