"""``block_influence``: ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect", eq. 1)::

    BI_l = 1 − E_{X, t} [ x_{l,t}ᵀ x_{l+1,t} / (‖x_{l,t}‖₂ ‖x_{l+1,t}‖₂) ]

where ``x_{l,t}`` is the hidden state of token t entering decoder block l and ``x_{l+1,t}`` the one
leaving it. The expectation is the mean over every non-padding calibration token. Both states are
read with a forward hook on the block itself, so the last block is measured before the model's final
norm. ``angular=true`` uses the angular distance ``arccos(cos)/π`` per token instead of ``1 − cos``
(the ``angular`` option of the reference implementation, sramshetty/ShortGPT, after Gromov et al.
2024). A block that barely changes its input (low BI) is redundant: ShortGPT removes the lowest-BI
blocks first, so a high BI marks an important layer and ``higher_is_better=True`` (allocators give
low-BI layers more sparsity).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import BlockInfluenceOptions


def distance_sum(h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor, angular: bool = False
                 ) -> tuple[float, int]:
    """Sum over unmasked tokens of ``1 − cos(h_in_t, h_out_t)`` (or ``arccos(cos)/π``) and the
    number of those tokens.

    ``h_in``, ``h_out``: ``[B, T, d]``; ``mask``: ``[B, T]`` (1 = real token).
    """
    cos = F.cosine_similarity(h_in.double(), h_out.double(), dim=-1)  # [B, T]
    dist = torch.arccos(cos.clamp(-1, 1)) / math.pi if angular else 1 - cos
    keep = mask.bool()
    return float(dist[keep].sum()), int(keep.sum())


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor,
                    angular: bool = False) -> float:
    """``mean_t (1 − cos(h_in_t, h_out_t))`` over the unmasked tokens of one batch."""
    total, count = distance_sum(h_in, h_out, mask, angular)
    return total / count


def _hidden(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple | list) else x


class BlockInfluenceScorer:
    """ShortGPT's Block Influence ``1 − cos(x_in, x_out)`` per block; higher = more important."""

    def __init__(self, options: BlockInfluenceOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        split = calibration_split(ctx, task, self.options, default="train")
        n_layers = len(ctx.layer_map)
        sums = [0.0] * n_layers
        counts = [0] * n_layers
        current: dict[str, torch.Tensor] = {}

        def hook(index: int):
            def forward(_m: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
                h_in = args[0] if args else kwargs["hidden_states"]
                mask = current["mask"]
                h_out = _hidden(output)
                # some models flatten tokens inside a block; restore [B, T, d]
                h_in, h_out = (h.reshape(*mask.shape, h.shape[-1]) for h in (h_in, h_out))
                total, count = distance_sum(h_in, h_out, mask, self.options.angular)
                sums[index] += total
                counts[index] += count
            return forward

        handles = [block.register_forward_hook(hook(i), with_kwargs=True)
                   for i, block in enumerate(ctx.layer_map.blocks)]
        try:
            batches = split.batches(ctx.batch_size, ctx.pad_id)
            with torch.no_grad():
                for batch in ctx.track(batches, split.num_batches(ctx.batch_size), "block influence"):
                    batch = batch.to(ctx.device)
                    current["mask"] = batch.attention_mask
                    ctx.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False)
        finally:
            for h in handles:
                h.remove()
        values = torch.tensor([s / c for s, c in zip(sums, counts, strict=True)],
                              dtype=torch.float32)
        return LayerScores(values, True, "block_influence",
                           {"n_calibration": len(split), "n_tokens": counts[0],
                            "angular": self.options.angular})
