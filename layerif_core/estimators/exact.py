"""``exact``: the explicit per-layer curvature block and a linear solve; the oracle of the tests.

``G_l = (1/N) Σ_i g_i^l g_i^lᵀ`` over the tracked parameters of layer l (all its modules jointly,
cross-module terms included), with ``g_i`` the gradient of ``L(z_i)`` under the Fisher's labels (the
model's sampled labels for the true Fisher, the data labels for the empirical one; for the
cross-entropy the true Fisher is the Gauss–Newton matrix in expectation). Then
``V_l = (G_l + D_l)^{-1} q^l`` with ``D_l`` holding ``λ_m`` on module m's diagonal (default
``0.1 · trace(G_mm) / P_m``, the mean eigenvalue of the module's block), and ``I`` from the shared
score pass. ``G_l`` costs ``P_l²`` float64 numbers, so it refuses layers above ``max_block_params``.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_
from layerif_core.errors import ModelError
from layerif_core.estimators.damping import CurvatureOptions, check_rules, module_damping
from layerif_core.estimators.factors import augment
from layerif_core.estimators.kronecker import query_gradient, run_pass, score_pass
from layerif_core.estimators.options import ExactOptions
from layerif_core.layers import TrackedModule


def _sizes(tm: TrackedModule) -> int:
    return tm.d_out * (tm.d_in + int(tm.has_bias))


def check_size(ctx: RunContext, limit: int) -> None:
    """Refuse, with the memory it would take, a layer whose block is larger than ``limit``²."""
    sizes = ctx.layer_map.num_params()
    big = max(sizes)
    if big > limit:
        layer = sizes.index(big)
        gib = sum(p * p for p in sizes) * 8 / 2**30
        raise ModelError(f"exact: layer {layer} has {big} tracked parameters, its curvature block "
                         f"{big}×{big} (all layers: {gib:.1f} GiB float64) exceeds max_block_params="
                         f"{limit}; use ekfac/kfac/lissa, track fewer modules, or raise the limit.")


def fit_blocks(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions) -> dict[str, torch.Tensor]:
    """``layer{l}``: ``G_l`` ``[P_l, P_l]`` float64 from explicit per-example gradients."""
    layers = ctx.layer_map.layers
    sizes = ctx.layer_map.num_params()
    blocks = {f"layer{l}": torch.zeros(p, p, dtype=torch.float64, device=ctx.device)
              for l, p in enumerate(sizes)}
    count = torch.zeros(1, dtype=torch.float64, device=ctx.device)
    grads: dict[str, torch.Tensor] = {}

    def flush() -> None:
        if not grads:
            return
        for l, layer in enumerate(layers):
            g = torch.cat([grads[tm.name] for tm in layer], dim=1).double()  # [B, P_l]
            blocks[f"layer{l}"] += g.T @ g
        grads.clear()

    def on_batch(batch: Batch) -> None:
        flush()
        count[0] += batch.input_ids.shape[0]

    def per_example(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # g_b = Σ_t δ_t ãᵀ_t: [B, d_out, d_in'] flattened row-major like q
        grads[tm.name] = torch.einsum("bto,bti->boi", delta, augment(tm, a)).flatten(1)

    run_pass(ctx, train, f"exact curvature ({train.name})", on_backward=per_example,
             on_batch=on_batch, sample_seed=opts.sample_seed(ctx.seed))
    flush()
    all_reduce_(count)
    n = max(float(count[0]), 1.0)
    return {k: all_reduce_(v) / n for k, v in blocks.items()}


class Exact:
    """Influence with the explicit per-layer block (tiny models only)."""

    def __init__(self, options: ExactOptions | None = None):
        self.options = options or ExactOptions()

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        check_size(ctx, self.options.max_block_params)
        check_rules(self.options, ctx.layer_map.modules())
        self._blocks = fit_blocks(ctx, train, self.options)  # not cached: P² numbers per layer
        self._fitted = (id(ctx), train.fingerprint)

    def damping_vector(self, ctx: RunContext, layer: int, block: torch.Tensor) -> torch.Tensor:
        """``diag(D_l)``: ``λ_m`` repeated over module m's parameters."""
        parts, start = [], 0
        diag = block.diagonal()
        for tm in ctx.layer_map.layers[layer]:
            p = _sizes(tm)
            lam = module_damping(self.options, tm, float(diag[start:start + p].mean()))
            parts.append(torch.full((p,), lam, dtype=torch.float64, device=block.device))
            start += p
        return torch.cat(parts)

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        if getattr(self, "_fitted", None) != (id(ctx), train.fingerprint):
            self.fit(ctx, train)
        q = query_gradient(ctx, query)
        v = {}
        for l, layer in enumerate(ctx.layer_map.layers):
            block = self._blocks[f"layer{l}"].to(ctx.device, torch.float64)
            rhs = torch.cat([q[tm.name].flatten() for tm in layer]).double()
            system = block + torch.diag(self.damping_vector(ctx, l, block))
            sol = torch.linalg.solve(system, rhs)
            start = 0
            for tm in layer:
                p = _sizes(tm)
                v[tm.name] = sol[start:start + p].view(tm.d_out, -1).float()
                start += p
        return score_pass(ctx, train, v)
