"""Per-sequence losses: ``L(z)`` is the summed token cross-entropy of a sequence (DESIGN §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerif_core.data import IGNORE, Batch
from layerif_core.errors import NumericalError


def sequence_losses(model: torch.nn.Module, batch: Batch, labels: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Summed next-token cross-entropy of each sequence, ``[B]`` float32.

    ``labels`` overrides ``batch.labels`` (e.g. labels sampled from the model for the true Fisher);
    positions equal to ``-100`` are not counted.
    """
    # logits: [B, T, V]; labels: [B, T] aligned with input_ids (position t predicts t+1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
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
