"""The passes every Kronecker-structured estimator shares (architecture §4, "How it must be computed").

- :func:`query_gradient`: one pass over the query split accumulating, per tracked module,
  ``q = Σ_{z ∈ query} Σ_t δ_tᵀ a_t`` (``[d_out, d_in (+1)]``, float32).
- :func:`score_pass`: one pass over the train split giving, for each example ``i`` and module ``m``
  of layer ``l``, ``⟨V_m, g_{i,m}⟩ = Σ_t δ_{i,t}ᵀ V_m a_{i,t}`` summed into ``I[l, i]``; the
  per-example gradient ``g_{i,m}`` is never formed.
- :func:`run_pass`: the forward/backward loop both use (and that fit passes reuse).

Per-sequence losses come from one batched backward of the summed loss: sequences do not interact,
so ``δ`` of row b is the gradient of ``L(z_b)`` alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_, shard
from layerif_core.estimators.capture import BackwardFn, ForwardFn, capture, frozen_with_input_grad
from layerif_core.layers import TrackedModule
from layerif_core.losses import check_finite, sequence_losses

LabelFn = Callable[[Batch], torch.Tensor]


def run_pass(ctx: RunContext, split: TokenizedSplit, description: str,
             on_backward: BackwardFn | None = None, on_forward: ForwardFn | None = None,
             labels: LabelFn | None = None, on_batch: Callable[[Batch], None] | None = None,
             modules: list[TrackedModule] | None = None, sample_seed: int | None = None) -> None:
    """Forward and backward the summed loss of every batch of this rank's shard of ``split``.

    ``on_batch`` is called with each batch before its forward (estimators use it to learn the
    current example indices and padding mask); ``labels`` replaces the data labels;
    ``sample_seed`` draws the labels from the model's own forward instead (the true Fisher).
    """
    mine = split.subset(shard(len(split))) if _sharded(split) else split
    index_map = shard(len(split))
    modules = modules if modules is not None else ctx.layer_map.modules()
    batches = mine.batches(ctx.batch_size, ctx.pad_id)
    current = {"size": 0}
    with frozen_with_input_grad(ctx.model), capture(modules, on_backward, on_forward,
                                                    batch_size=lambda: current["size"]):
        for batch in ctx.track(batches, mine.num_batches(ctx.batch_size), description):
            current["size"] = batch.input_ids.shape[0]
            batch = Batch(batch.input_ids, batch.attention_mask, batch.labels,
                          torch.tensor([index_map[i] for i in batch.index.tolist()]))
            batch = batch.to(ctx.device)
            if on_batch is not None:
                on_batch(batch)
            lab = labels(batch) if labels is not None else None
            losses = sequence_losses(ctx.model, batch, lab, sample_seed)
            check_finite(losses, batch, split.name)
            if on_backward is not None:
                losses.sum().backward()


def _sharded(split: TokenizedSplit) -> bool:
    return len(shard(len(split))) != len(split)


def _bias_split(tm: TrackedModule, mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[d_out, d_in (+1)]`` into the weight part and the bias column (or None)."""
    return (mat[:, : tm.d_in], mat[:, tm.d_in]) if tm.has_bias else (mat, None)


def query_gradient(ctx: RunContext, query: TokenizedSplit) -> dict[str, torch.Tensor]:
    """``q_m = Σ_{z ∈ query} ∇_{W_m} L(z)`` per tracked module, ``[d_out, d_in (+1)]`` float32."""
    q = {tm.name: torch.zeros(tm.d_out, tm.d_in + int(tm.has_bias), device=ctx.device)
         for tm in ctx.layer_map.modules()}

    def accumulate(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # a: [B, T, d_in]; delta: [B, T, d_out]
        w, b = _bias_split(tm, q[tm.name])
        w += delta.flatten(0, 1).T @ a.flatten(0, 1)
        if b is not None:
            b += delta.sum(dim=(0, 1))

    run_pass(ctx, query, f"query gradient ({query.name})", on_backward=accumulate)
    for v in q.values():
        all_reduce_(v)
    return q


def score_pass(ctx: RunContext, train: TokenizedSplit, preconditioned: dict[str, torch.Tensor],
               description: str | None = None) -> torch.Tensor:
    """``I[l, i] = Σ_{m ∈ l} Σ_t δ_{i,t}ᵀ V_m a_{i,t}`` for every train example; ``[L, N]`` float32.

    ``preconditioned`` maps module name to ``V_m = (G_m + λI)^{-1} q_m`` (``[d_out, d_in (+1)]``).
    """
    n_layers = len(ctx.layer_map)
    scores = torch.zeros(n_layers, len(train), device=ctx.device)
    current: dict[str, torch.Tensor] = {}

    def remember(batch: Batch) -> None:
        current["index"] = batch.index.to(ctx.device)

    def contract(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # a: [B, T, d_in]; delta: [B, T, d_out]; Va: [B, T, d_out]
        w, b = _bias_split(tm, preconditioned[tm.name])
        va = a @ w.T
        if b is not None:
            va = va + b
        scores[tm.layer].index_add_(0, current["index"], torch.einsum("bto,bto->b", delta, va))

    run_pass(ctx, train, description or f"scores ({train.name})", on_backward=contract,
             on_batch=remember)
    return all_reduce_(scores)
