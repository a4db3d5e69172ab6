"""``grad_cosine``: the cosine of the query and training gradients per layer,
``I[l, i] = ⟨q^l, g_i^l⟩ / (‖q^l‖ ‖g_i^l‖)`` (G = 0; the inner product of unit vectors, as in
TracIn-CP's cosine variant and RelatIF-style normalisation, Barshan et al. 2020).

``‖g_i^l‖² = Σ_{m ∈ l} ‖Σ_t δ_t ã_tᵀ‖²`` is computed from token Gram matrices in the same score pass,
so no per-example gradient is formed for short sequences. An example with a zero gradient gets 0.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_
from layerif_core.estimators.factors import augment, example_sq_norms
from layerif_core.estimators.kronecker import query_gradient, run_pass
from layerif_core.layers import TrackedModule


class GradCosine:
    """Cosine similarity of the summed query gradient with each training gradient, per layer."""

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """No curvature to fit."""

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        q = query_gradient(ctx, query)
        n_layers = len(ctx.layer_map)
        dots = torch.zeros(n_layers, len(train), device=ctx.device)
        norms = torch.zeros(n_layers, len(train), device=ctx.device)
        current: dict[str, torch.Tensor] = {}

        def remember(batch: Batch) -> None:
            current["index"] = batch.index.to(ctx.device)

        def contract(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
            # a: [B, T, d_in'] after augment; delta: [B, T, d_out]
            a = augment(tm, a)
            dot = torch.einsum("bto,bto->b", delta, a @ q[tm.name].T)
            dots[tm.layer].index_add_(0, current["index"], dot)
            norms[tm.layer].index_add_(0, current["index"], example_sq_norms(a, delta))

        run_pass(ctx, train, f"cosine scores ({train.name})", on_backward=contract, on_batch=remember)
        all_reduce_(dots)
        all_reduce_(norms)
        q_norm = torch.stack([torch.cat([q[tm.name].flatten() for tm in layer]).norm()
                              for layer in ctx.layer_map.layers])
        denom = norms.clamp(min=0).sqrt() * q_norm[:, None]
        return torch.where(denom > 0, dots / denom.clamp(min=1e-30), torch.zeros_like(dots))
