"""The passes every Kronecker-structured estimator shares (architecture §4, "How it must be computed").

- :func:`query_gradient`: one pass over the query split accumulating, per tracked module,
  ``q = Σ_{z ∈ query} Σ_t δ_tᵀ a_t`` (``[d_out, d_in (+1)]``, float32).
- :func:`score_pass`: one pass over the train split giving, for each example ``i`` and module ``m``
  of layer ``l``, ``⟨V_m, g_{i,m}⟩ = Σ_t δ_{i,t}ᵀ V_m a_{i,t}`` summed into ``I[l, i]``; the
  per-example gradient ``g_{i,m}`` is never formed.
- :func:`run_pass`: the forward/backward loop both use (and that fit passes reuse).

Each takes ``modules`` (a partition of the tracked modules, architecture §8; default all of them)
and ``dtype``: ``None`` hands the hooks ``a`` and ``δ`` in the model's dtype and the contractions run
as matmuls with float32 output (:func:`mm_f32`), so a bf16 model is never copied to float32
activation by activation.

Per-sequence losses come from one batched backward of the summed loss: sequences do not interact,
so ``δ`` of row b is the gradient of ``L(z_b)`` alone. ``L(z)`` is the split's loss: the sum of the
example's token cross-entropies, or their mean (``TokenizedSplit.reduction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_, batches_to_run, shard
from layerif_core.estimators.capture import BackwardFn, ForwardFn, capture, frozen_with_input_grad
from layerif_core.layers import TrackedModule
from layerif_core.losses import check_finite, sequence_losses

LabelFn = Callable[[Batch], torch.Tensor]


def mm_f32(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` in float32: a bf16/fp16 matmul with float32 output on a GPU (fp32 accumulation, no
    upcast copy of the operands); float32 operands as they are; half precision upcast on a CPU
    (whose half-precision matmuls have no float32 output)."""
    if x.dtype == torch.float32 and y.dtype == torch.float32:
        return x @ y
    if x.is_cuda and x.dtype == y.dtype and x.dim() == y.dim() and x.dim() in (2, 3) \
            and _OUT_DTYPE.get(x.dtype, True):
        try:
            mm = torch.mm if x.dim() == 2 else torch.bmm
            return mm(x, y, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch or GPU without it: upcast from now on
            _OUT_DTYPE[x.dtype] = False
    return x.float() @ y.float()


_OUT_DTYPE: dict[torch.dtype, bool] = {}  # whether matmuls with out_dtype work for this input dtype


def add_mm_f32_(acc: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``acc += x @ y`` into a float32 ``acc``: one ``addmm_`` for float32 operands (no product
    tensor, one kernel instead of two), :func:`mm_f32` then an add otherwise."""
    if x.dtype == torch.float32 and y.dtype == torch.float32:
        return acc.addmm_(x, y)
    return acc.add_(mm_f32(x, y))


def run_pass(ctx: RunContext, split: TokenizedSplit, description: str,
             on_backward: BackwardFn | None = None, on_forward: ForwardFn | None = None,
             labels: LabelFn | None = None, on_batch: Callable[[Batch], None] | None = None,
             modules: list[TrackedModule] | None = None, sample_seed: int | None = None,
             dtype: torch.dtype | None = torch.float32) -> None:
    """Forward and backward the summed loss of every batch of this rank's shard of ``split``.

    ``on_batch`` is called with each batch before its forward (estimators use it to learn the
    current example indices and padding mask); ``labels`` replaces the data labels;
    ``sample_seed`` draws the labels from the model's own forward instead (the true Fisher);
    ``dtype`` is what the hooks receive (``None``: the model's dtype). Under FSDP a rank with fewer
    batches runs extra ones with its hooks muted, since every forward gathers from all ranks.
    """
    mine = split.subset(shard(len(split))) if _sharded(split) else split
    index_map = shard(len(split))
    modules = modules if modules is not None else ctx.layer_map.modules()
    own = mine.num_batches(ctx.batch_size)
    total = batches_to_run(own, ctx.model, ctx.device)
    current = {"size": 0, "muted": False}

    def live(fn):
        return None if fn is None else (lambda *args: None if current["muted"] else fn(*args))

    with frozen_with_input_grad(ctx.model), capture(modules, live(on_backward), live(on_forward),
                                                    batch_size=lambda: current["size"], dtype=dtype):
        for k, batch in enumerate(ctx.track(_padded_batches(ctx, split, mine, total), total,
                                            description)):
            current["size"] = batch.input_ids.shape[0]
            current["muted"] = k >= own
            if not current["muted"]:
                batch = replace(batch, index=torch.tensor([index_map[i] for i in batch.index.tolist()]))
            batch = batch.to(ctx.device)
            if on_batch is not None and not current["muted"]:
                on_batch(batch)
            lab = labels(batch) if labels is not None else None
            losses = sequence_losses(ctx.model, batch, lab, sample_seed, split.reduction)
            check_finite(losses, batch, split.name)
            if on_backward is not None:
                losses.sum().backward()


def _padded_batches(ctx: RunContext, split: TokenizedSplit, mine: TokenizedSplit, total: int):
    """This rank's batches, then (FSDP only) repeats of the first example until ``total``."""
    yield from mine.batches(ctx.batch_size, ctx.pad_id)
    extra = total - mine.num_batches(ctx.batch_size)
    if extra > 0:
        filler = next(split.subset([0]).batches(1, ctx.pad_id))
        for _ in range(extra):
            yield filler


def _sharded(split: TokenizedSplit) -> bool:
    return len(shard(len(split))) != len(split)


def _bias_split(tm: TrackedModule, mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[d_out, d_in (+1)]`` into the weight part and the bias column (or None)."""
    return (mat[:, : tm.d_in], mat[:, tm.d_in]) if tm.has_bias else (mat, None)


def query_gradient(ctx: RunContext, query: TokenizedSplit, modules: list[TrackedModule] | None = None,
                   dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """``q_m = Σ_{z ∈ query} ∇_{W_m} L(z)`` per tracked module (or per module of ``modules``),
    ``[d_out, d_in (+1)]`` float32."""
    modules = modules if modules is not None else ctx.layer_map.modules()
    q = {tm.name: torch.zeros(tm.d_out, tm.d_in + int(tm.has_bias), device=ctx.device)
         for tm in modules}

    def accumulate(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # a: [B, T, d_in]; delta: [B, T, d_out]
        w, b = _bias_split(tm, q[tm.name])
        add_mm_f32_(w, delta.flatten(0, 1).T, a.flatten(0, 1))
        if b is not None:
            b += delta.sum(dim=(0, 1), dtype=torch.float32)

    run_pass(ctx, query, f"query gradient ({query.name})", on_backward=accumulate, modules=modules,
             dtype=dtype)
    for v in q.values():
        all_reduce_(v)
    return q


def score_pass(ctx: RunContext, train: TokenizedSplit, preconditioned: dict[str, torch.Tensor],
               description: str | None = None, modules: list[TrackedModule] | None = None,
               dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``I[l, i] = Σ_{m ∈ l} Σ_t δ_{i,t}ᵀ V_m a_{i,t}`` for every train example; ``[L, N]`` float32.

    ``preconditioned`` maps module name to ``V_m = (G_m + λI)^{-1} q_m`` (``[d_out, d_in (+1)]``)
    for every module of ``modules`` (default: all tracked modules). In a half-precision model
    ``V_m a`` is a matmul in the model's dtype with float32 output, multiplied by ``δ`` in place.
    """
    modules = modules if modules is not None else ctx.layer_map.modules()
    n_layers = len(ctx.layer_map)
    scores = torch.zeros(n_layers, len(train), device=ctx.device)
    current: dict[str, torch.Tensor] = {}
    # V as [d_in, d_out] (in the model's dtype where a half-precision matmul has float32 output)
    cast = ctx.dtype if dtype is None and ctx.device.type == "cuda" else torch.float32
    weights = {}
    for tm in modules:
        w, b = _bias_split(tm, preconditioned[tm.name])
        weights[tm.name] = (w.T.to(cast), b)

    def remember(batch: Batch) -> None:
        current["index"] = batch.index.to(ctx.device)

    def contract(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # a: [B, T, d_in]; delta: [B, T, d_out]; va: [B·T, d_out] float32
        w, b = weights[tm.name]
        va = mm_f32(a.flatten(0, 1), w)
        if b is not None:
            va += b
        per_example = va.view(delta.shape).mul_(delta).sum(dim=(1, 2))
        scores[tm.layer].index_add_(0, current["index"], per_example)

    run_pass(ctx, train, description or f"scores ({train.name})", on_backward=contract,
             on_batch=remember, modules=modules, dtype=dtype)
    return all_reduce_(scores)
