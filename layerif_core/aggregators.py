"""Aggregators: the influence matrix ``I[L, N]`` (framework sign, positive = helpful) to ``S[L]``.

The LayerIF authors' code (HadiAskari/Expert_Allocation, ``expert_allocator.ipynb``) computes
``IF = −I`` (Koh & Liang's sign: negative = helpful), sums it over the validation examples, deletes
the training examples whose total is > 0 and sums the rest: the paper's "+VE" score is the total
**helpful** influence through a layer. "TOP-25%" keeps the 25% most helpful examples, "ALL" sums
everything. For every LayerIF variant a higher score means more influence flows through the layer,
i.e. a **less mature** layer (more experts, more sparsity, a higher rank): ``higher_is_better`` is
``False`` for all of them. Summing the harmful side (``harmful_sum``, ``top_harmful``) is the reverse
experiment, with the same direction.

Each aggregator states ``side``: which influences it sums (``helpful``, ``harmful``, ``net`` or
``both``); the ``layerif`` scorer records it in ``scores.json`` and warns when that side is empty.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

# names of earlier versions, which summed the harmful side under the paper's names
REMOVED = {
    "positive_sum": "helpful_sum (the paper's +VE), or harmful_sum for the reverse experiment",
    "top_fraction": "top_helpful (the paper's TOP-25%), or top_harmful for the reverse experiment",
    "sum": "net_sum (the paper's ALL)",
    "mean": "net_sum (the paper's ALL)",
    "positive_fraction": "helpful_sum or harmful_sum",
}


class HelpfulSum:
    """LayerIF's "+VE": ``S[l] = Σ_i max(I[l, i], 0)``, the helpful influence; higher = less mature."""

    higher_is_better = False
    side = "helpful"

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return influence.double().clamp(min=0).sum(dim=1).float()


class HarmfulSum:
    """The reverse experiment: ``S[l] = Σ_i max(−I[l, i], 0)``, the harmful influence; higher = less
    mature."""

    higher_is_better = False
    side = "harmful"

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return (-influence.double()).clamp(min=0).sum(dim=1).float()


class NetSum:
    """LayerIF's "ALL": ``S[l] = Σ_i I[l, i]``, the net helpful influence; higher = less mature."""

    higher_is_better = False
    side = "net"

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return influence.double().sum(dim=1).float()


class AbsSum:
    """``S[l] = Σ_i |I[l, i]|``: how sensitive the query loss is to the data through l; higher = less
    mature."""

    higher_is_better = False
    side = "both"

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return influence.double().abs().sum(dim=1).float()


class TopOptions(BaseModel):
    """Options of ``top_helpful`` and ``top_harmful``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.25, gt=0, le=1, description="Share of the training examples summed per "
                            "layer: the ⌈fraction·N⌉ largest on the aggregator's side (LayerIF: 0.25).")


def top_k(n: int, fraction: float) -> int:
    """``⌈fraction · n⌉`` (at least 1), robust to the float error of ``fraction · n``."""
    return max(1, math.ceil(round(fraction * n, 9)))


class TopHelpful:
    """LayerIF's "TOP-25%": per layer, the sum of the ``⌈fraction·N⌉`` largest ``I[l, i]`` (the most
    helpful examples); higher = less mature."""

    higher_is_better = False
    side = "helpful"

    def __init__(self, options: TopOptions | None = None):
        self.fraction = (options or TopOptions()).fraction

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        k = top_k(influence.shape[1], self.fraction)
        return influence.double().topk(k, dim=1).values.sum(dim=1).float()


class TopHarmful(TopHelpful):
    """The reverse of ``top_helpful``: the sum of the ``⌈fraction·N⌉`` largest ``−I[l, i]`` (the most
    harmful examples); higher = less mature."""

    side = "harmful"

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return super().__call__(-influence)
