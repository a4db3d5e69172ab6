"""``gradient_norm``: the norm of the validation-loss gradient through each layer's parameters::

    S[l] = ‖ ∇_{θ_l} Σ_{z ∈ validation} L(z) ‖₂

with θ_l the tracked weights (and biases) of layer l and L(z) the summed token cross-entropy of a
sequence (architecture §4; ``S[l]`` is the norm of the query gradient ``q^l`` that every influence
estimator starts from). A cheap data-driven baseline: a layer whose parameters still receive a
large gradient on the task has the most left to learn, i.e. is *worse* trained, so
``higher_is_better=False`` (it gets more sparsity / more experts). ``normalize=true`` divides by
``sqrt(number of parameters)`` (the RMS gradient entry), for layers of unequal size.
"""

from __future__ import annotations

import math

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.losses import check_finite, sequence_losses
from layerif_core.results import LayerScores
from layerif_core.scorers.calibration import calibration_split
from layerif_core.scorers.options import GradientNormOptions


class GradientNormScorer:
    """Per-layer ``‖∇_{θ_l} Σ_z L(z)‖₂`` on validation data; higher = worse trained."""

    def __init__(self, options: GradientNormOptions):
        self.options = options

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        split = calibration_split(ctx, task, self.options, default="validation")
        modules = ctx.layer_map.modules()
        tracked = {id(p) for tm in modules for p in _params(tm.module)}
        flags = [(p, p.requires_grad, p.grad) for p in ctx.model.parameters()]
        try:
            for p, _, _ in flags:
                p.requires_grad_(id(p) in tracked)
                p.grad = None
            batches = split.batches(ctx.batch_size, ctx.pad_id)
            for batch in ctx.track(batches, split.num_batches(ctx.batch_size), "gradient norm"):
                batch = batch.to(ctx.device)
                losses = sequence_losses(ctx.model, batch)
                check_finite(losses, batch, split.name)
                losses.sum().backward()
            sq = [sum(float(tm.grad_matrix().double().square().sum()) for tm in layer)
                  for layer in ctx.layer_map.layers]
        finally:
            for p, flag, grad in flags:
                p.grad = grad
                p.requires_grad_(flag)
        norms = [math.sqrt(s) for s in sq]
        if self.options.normalize:
            norms = [n / math.sqrt(k) for n, k in zip(norms, ctx.layer_map.num_params(), strict=True)]
        return LayerScores(torch.tensor(norms, dtype=torch.float32), False, "gradient_norm",
                           {"n_examples": len(split), "normalize": self.options.normalize})


def _params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None))
            if isinstance(p, torch.nn.Parameter)]
