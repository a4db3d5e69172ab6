"""Per-sequence losses: ``L(z)`` is the summed token cross-entropy of a sequence (architecture §4)."""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from layerif_core.data import IGNORE, Batch
from layerif_core.errors import NumericalError


def sequence_losses(model: torch.nn.Module, batch: Batch, labels: torch.Tensor | None = None,
                    sample_seed: int | None = None, reduction: str = "sum") -> torch.Tensor:
    """Next-token cross-entropy of each sequence, ``[B]`` float32: summed over its loss tokens, or
    (``reduction="mean"``) their mean, the Hugging Face loss of one example.

    ``labels`` overrides ``batch.labels`` (e.g. labels sampled from the model for the true Fisher);
    positions equal to ``-100`` are not counted (the authors' pads, labelled EOS, are: the mean is
    then over every position of the padded example, as the Hugging Face loss of ``labels =
    input_ids`` with the pads masked only as attention keys). With ``sample_seed`` the targets are
    drawn from the model's own predictive distribution of this same forward (see :func:`sample_labels`).
    """
    # logits: [B, T, V]; labels: [B, T] aligned with input_ids (position t predicts t+1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
    if sample_seed is not None:
        labels = sample_labels(logits.detach(), batch, sample_seed)
    target = (batch.labels if labels is None else labels)[:, 1:]
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=IGNORE, reduction="none")
    summed = tok.view(target.shape).sum(dim=1)
    if reduction == "sum":
        return summed
    return summed / (target != IGNORE).sum(dim=1).clamp_min(1)


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


def race_block(vocab: int) -> int:
    """Tokens per block of :func:`sample_labels`' race: the smallest divisor of ``vocab`` in
    ``[⌈√V⌉, 2⌈√V⌉]`` (no padding; 256 for SmolLM2's 49152, 200 for Llama's 32000), else ``⌈√V⌉``."""
    root = math.isqrt(vocab - 1) + 1
    return next((s for s in range(root, 2 * root + 1) if vocab % s == 0), root)


def sample_labels(logits: torch.Tensor, batch: Batch, seed: int) -> torch.Tensor:
    """Targets drawn from ``softmax(logits)`` where the data has a label (the true Fisher's labels).

    ``logits`` is ``[B, T-1, V]`` (position t predicts t+1). Each labelled position is drawn by an
    exponential race in two levels: the vocabulary is cut into blocks of about ``√V`` tokens
    (:func:`race_block`), a block wins with probability its mass (``argmax M_b / E_b``,
    ``E ~ Exp(1)``), then a token of that block with probability its share (``argmax p_i / E_i``):
    exactly ``softmax(logits)``, with about ``2√V`` random numbers per token instead of the ``V`` of
    ``torch.multinomial``'s race (448 instead of 49152 for SmolLM2; 20× faster for 8 × 512 tokens
    on a 2-core CPU). Like a one-level race, and unlike inverse-CDF sampling, a small
    change of the distribution changes few draws: a bf16 model draws the same labels as its float32
    twin wherever their predictions agree (2–4% of SmolLM2's labels differ at a total-variation
    distance of 1.9%; inverse-CDF sampling changes 37%), so runs in another dtype or on another
    device see nearly the same Fisher. The exponentials come from a CPU generator seeded by
    :func:`example_seed`, in the order of the example's labelled positions: an example's draw
    depends on neither the batch size, the train order, nor the device. One device synchronisation
    per batch. An example with a non-finite logit at a labelled position keeps its data labels: its
    loss is then non-finite too, and :func:`check_finite` names it. Returns ``[B, T]`` labels
    aligned with ``input_ids``.
    """
    labels = batch.labels.clone()
    keep = batch.labels[:, 1:] != IGNORE  # [B, T-1]
    vocab = logits.shape[-1]
    size = race_block(vocab)
    blocks = -(-vocab // size)
    keep_cpu, ids, mask = keep.cpu(), batch.input_ids.cpu(), batch.attention_mask.cpu().bool()
    race = torch.ones(*keep.shape, blocks + size)  # Exp(1) per block, then per token, per position
    spans = []  # positions up to an example's last labelled one
    for b in range(keep.shape[0]):
        where = keep_cpu[b].nonzero().squeeze(1)
        spans.append(int(where[-1]) + 1 if len(where) else 0)
        if len(where):
            gen = torch.Generator().manual_seed(example_seed(ids[b][mask[b]], seed))
            u = torch.rand(len(where), blocks + size, generator=gen, dtype=torch.float64)
            race[b, where] = torch.log1p(-u).neg_().clamp_(min=1e-30).float()
    race = race.to(logits.device)
    for b, span in enumerate(spans):
        if not span:
            continue
        probs = torch.softmax(logits[b, :span], dim=-1, dtype=torch.float32)
        if blocks * size != vocab:
            probs = F.pad(probs, (0, blocks * size - vocab))
        probs = probs.view(span, blocks, size)
        mass = probs.sum(dim=-1)  # [span, blocks]; non-finite where a logit is
        block = (mass / race[b, :span, :blocks]).argmax(dim=-1)
        inner = probs.gather(1, block.view(span, 1, 1).expand(span, 1, size)).squeeze(1)
        drawn = block * size + (inner / race[b, :span, blocks:]).argmax(dim=-1)
        k = keep[b, :span]
        finite = (torch.isfinite(mass).all(dim=-1) | ~k).all()  # a device flag: no synchronisation
        row = labels[b, 1:span + 1]
        row.copy_(torch.where(k & finite, drawn.clamp_(max=vocab - 1), row))
    return labels
