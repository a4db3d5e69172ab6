"""The controls of every layer-score comparison: ``uniform`` (every layer equal), ``random``
(independent U(0, 1) scores from a seeded generator) and ``depth`` (the layer index).

Under any allocator, ``uniform`` reproduces the uniform allocation (equal sparsity, equal experts);
``random`` is the chance level a data-driven or model-only score has to beat; ``depth`` is the plain
rule "deeper layers get more" (through ``alpha_pruning``: sparsity rising linearly with depth), so a
gain that only reflects where in the stack the budget goes shows as such; ``direction: falling``
mirrors it ("the first layers get more"). None is measured from the
model, so all state ``higher_is_better=False`` (a higher score is treated as worse).
"""

from __future__ import annotations

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.results import LayerScores
from layerif_core.scorers.options import DepthOptions, RandomOptions


class UniformScorer:
    """Every layer scores 1: the control that turns any allocator into the uniform allocation."""

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        return LayerScores(torch.ones(len(ctx.layer_map)), False, "uniform")


class DepthScorer:
    """The layer index as the score: ``l`` (``direction: rising``, deeper layers are treated as worse
    trained) or ``L − 1 − l`` (``falling``, the mirror image: the first layers are)."""

    def __init__(self, options: DepthOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        n = len(ctx.layer_map)
        values = torch.arange(n, dtype=torch.float32)
        if self.options.direction == "falling":
            values = (n - 1) - values
        return LayerScores(values, False, "depth", {"direction": self.options.direction})


class RandomScorer:
    """Independent U(0, 1) scores per layer from ``torch.Generator().manual_seed(seed)``."""

    def __init__(self, options: RandomOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        seed = ctx.seed if self.options.seed is None else self.options.seed
        gen = torch.Generator().manual_seed(seed)
        values = torch.rand(len(ctx.layer_map), generator=gen, dtype=torch.float64).float()
        return LayerScores(values, False, "random", {"seed": seed})
