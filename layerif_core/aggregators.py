"""Aggregators: the influence matrix ``I[L, N]`` (framework sign, positive = helpful) to ``S[L]``.

Sign (architecture §4): the LayerIF paper reports ``I_paper = −I`` (positive = harmful, as in Koh & Liang
and DataInf). Its score ``positive_sum`` is ``S[l] = Σ_i max(−I[l, i], 0)``: the total harmful
influence flowing through layer l; a low S marks a well-trained layer (``higher_is_better=False``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch


class PositiveSum:
    """LayerIF's "+VE" score: ``S[l] = Σ_i max(−I[l, i], 0)`` (harmful influence); lower = better."""

    higher_is_better = False

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return (-influence.double()).clamp(min=0).sum(dim=1).float()


class HelpfulSum:
    """Mirror of ``positive_sum``: ``S[l] = Σ_i max(I[l, i], 0)`` (helpful influence); higher = better."""

    higher_is_better = True

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return influence.double().clamp(min=0).sum(dim=1).float()


class Sum:
    """LayerIF's "ALL" score: ``S[l] = Σ_i −I[l, i]`` (net harmful influence); lower = better."""

    higher_is_better = False

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return (-influence.double()).sum(dim=1).float()


class AbsSum:
    """``S[l] = Σ_i |I[l, i]|``: how sensitive the query loss is to the data through l; lower = better."""

    higher_is_better = False

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return influence.double().abs().sum(dim=1).float()


class Mean:
    """``S[l] = mean_i −I[l, i]`` (mean harmful influence, paper sign); lower = better."""

    higher_is_better = False

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return (-influence.double()).mean(dim=1).float()


class PositiveFraction:
    """``S[l] = #{i : −I[l, i] > 0} / N``: the share of harmful examples; lower = better."""

    higher_is_better = False

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        return (influence < 0).double().mean(dim=1).float()


class TopFractionOptions(BaseModel):
    """Options of ``top_fraction``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.25, gt=0, le=1, description="Share of the largest −I summed per layer.")


class TopFraction:
    """LayerIF's top-k variant: per layer, the sum of the largest ``⌈fraction·N⌉`` values of ``−I``."""

    higher_is_better = False

    def __init__(self, options: TopFractionOptions | None = None):
        self.fraction = (options or TopFractionOptions()).fraction

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        harmful = -influence.double()
        k = max(1, math.ceil(round(self.fraction * harmful.shape[1], 9)))
        return harmful.topk(k, dim=1).values.sum(dim=1).float()
