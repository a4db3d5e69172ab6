"""Block-by-block pruning with the block inputs recomputed through the already-pruned blocks.

As in the Wanda and SparseGPT reference code: the calibration windows run through the model up to the
first decoder block, whose inputs (hidden states and whatever else the model passes it: attention
mask, position ids, rotary embeddings) are captured by a pre-hook that then stops the forward. Each
block in turn (1) runs on its inputs with hooks on its linear modules collecting input statistics
(stopped as soon as every tracked module has seen its input), (2) has its modules pruned, (3) runs
again, pruned, to give the next block its inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from layerif_core.layers import LayerMap, TrackedModule
from layerif_prune.masks import magnitude_mask, wanda_mask
from layerif_prune.options import PruneOptions
from layerif_prune.resume import BlockCheckpoint
from layerif_prune.sparsegpt import dampened_inverse_factor, sparsegpt_prune


class _Stop(Exception):
    """Raised by a hook to end a forward pass early: at the first block (capture), or inside a block
    once its tracked modules have all seen their inputs (statistics)."""


@dataclass
class BlockCall:
    """The arguments one calibration batch passes to a decoder block, besides the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_as_kwarg: bool


def run_block(block: torch.nn.Module, call: BlockCall, hidden: torch.Tensor) -> torch.Tensor:
    """The block's output hidden states for ``hidden`` ``[B, T, d]``."""
    if call.hidden_as_kwarg:
        out = block(*call.args, hidden_states=hidden, **call.kwargs)
    else:
        out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(model: torch.nn.Module, block: torch.nn.Module, windows: torch.Tensor,
                         batch_size: int) -> tuple[list[BlockCall], list[torch.Tensor]]:
    """Inputs of ``block`` for each batch of ``windows`` ``[N, T]``: its calls and hidden states."""
    calls: list[BlockCall] = []
    hidden: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden.append(args[0].detach())
            calls.append(BlockCall(tuple(args[1:]), kwargs, False))
        else:
            hidden.append(kwargs.pop("hidden_states").detach())
            calls.append(BlockCall((), kwargs, True))
        raise _Stop

    device = next(model.parameters()).device
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            ids = windows[start:start + batch_size].to(device)
            with contextlib.suppress(_Stop):
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        handle.remove()
    return calls, hidden


class InputStats:
    """Input statistics of one linear module over calibration tokens (fp32 accumulators).

    ``sq[j] = Σ_t x_tj²`` (Wanda) and ``xtx = Σ_t x_t x_tᵀ`` (SparseGPT, only when ``gram``).
    """

    def __init__(self, d_in: int, device: torch.device, gram: bool):
        self.sq = torch.zeros(d_in, device=device)
        self.xtx = torch.zeros(d_in, d_in, device=device) if gram else None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        # x: [..., d_in] -> [N, d_in]
        x = x.reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)

    def hessian(self) -> torch.Tensor:
        """SparseGPT's ``H = 2XXᵀ/n``."""
        return self.xtx * (2.0 / max(self.tokens, 1))


def prune_module(tm: TrackedModule, sparsity: float, opts: PruneOptions, stats: InputStats | None,
                 factors: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Prune ``tm``'s weight in place; returns its mask ``[d_out, d_in]`` (True = pruned).

    ``factors`` caches SparseGPT's inverse-Hessian factor per shared :class:`InputStats`.
    """
    weight = tm.weight_matrix(tm.module.weight.data)  # [d_out, d_in] view
    nm = opts.nm()
    if opts.pruner == "magnitude":
        mask = magnitude_mask(weight, sparsity, nm)
    elif opts.pruner == "wanda":
        mask = wanda_mask(weight, stats.sq, sparsity, nm, opts.rounding)
    else:
        factors = {} if factors is None else factors
        if id(stats) not in factors:
            factors[id(stats)] = dampened_inverse_factor(stats.hessian(), opts.percdamp)
        new, mask = sparsegpt_prune(weight, None, sparsity, nm, opts.blocksize, opts.percdamp,
                                    factor=factors[id(stats)])
        weight.copy_(new.to(weight.dtype))
    weight.masked_fill_(mask, 0)
    return mask


Track = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_track(items: Iterable[Any], _total: int, _desc: str) -> Iterable[Any]:
    return items


@torch.no_grad()
def prune_blocks(model: torch.nn.Module, layer_map: LayerMap, sparsities: list[float],
                 opts: PruneOptions, windows: torch.Tensor | None, track: Track | None = None,
                 checkpoint: BlockCheckpoint | None = None) -> dict[str, torch.Tensor]:
    """Prune every tracked module of block l to ``sparsities[l]``; returns the masks by module name.

    With a ``checkpoint`` (Wanda, SparseGPT), the state after each block is kept and a rerun resumes
    after the last finished block; the state is removed once every block is pruned.
    """
    track = track or _no_track
    masks: dict[str, torch.Tensor] = {}
    if opts.nm() is None and not any(s > 0 for s in sparsities):
        return {tm.name: torch.zeros(tm.d_out, tm.d_in, dtype=torch.bool) for tm in layer_map.modules()}
    if opts.pruner == "magnitude":
        for layer in track(range(len(layer_map)), len(layer_map), f"{opts.pruner} pruning"):
            for tm in layer_map.layers[layer]:
                masks[tm.name] = prune_module(tm, sparsities[layer], opts, None)
        return masks
    calls, hidden = capture_block_inputs(model, layer_map.blocks[0], windows, opts.batch_size)
    first = 0
    if checkpoint is not None:
        first, restored = checkpoint.resume(layer_map.layers, masks)
        device = hidden[0].device
        hidden = hidden if restored is None else [h.to(device) for h in restored]
    for layer in track(range(first, len(layer_map)), len(layer_map) - first, f"{opts.pruner} pruning"):
        block = layer_map.blocks[layer]
        modules = layer_map.layers[layer]
        if sparsities[layer] > 0 or opts.nm() is not None:
            stats = _collect(block, modules, calls, hidden, gram=opts.pruner == "sparsegpt")
            factors: dict[int, torch.Tensor] = {}
            for tm in modules:
                masks[tm.name] = prune_module(tm, sparsities[layer], opts, stats[tm.name], factors)
            del stats, factors
        else:
            for tm in modules:
                masks[tm.name] = torch.zeros(tm.d_out, tm.d_in, dtype=torch.bool)
        if layer + 1 < len(layer_map):
            hidden = [run_block(block, c, h) for c, h in zip(calls, hidden, strict=True)]
            if checkpoint is not None:
                checkpoint.save(layer, modules, masks, hidden)
    if checkpoint is not None:
        checkpoint.clear()
    return masks


def _collect(block: torch.nn.Module, modules: list[TrackedModule], calls: list[BlockCall],
             hidden: list[torch.Tensor], gram: bool) -> dict[str, InputStats]:
    """Run the dense block on every batch with pre-hooks accumulating each module's input statistics.

    Modules fed the very same input tensor (q/k/v, gate/up) share one :class:`InputStats`, so its
    Gram matrix is accumulated (and SparseGPT's factor computed) once. Once every tracked module
    has seen its input in a batch, the hook stops that batch's forward (:class:`_Stop`): the rest of
    the block (for a Llama block, down_proj's matmul and the residual add; with attention modules
    only, the whole MLP) cannot change the statistics, and the next block's inputs come from the
    pruned block's own run anyway.
    """
    stats: dict[str, InputStats] = {}
    seen: list[tuple[torch.Tensor, InputStats]] = []  # this batch's inputs, held so ids stay unique
    waiting: set[str] = set()

    def hook(tm: TrackedModule, x: torch.Tensor) -> None:
        if tm.name not in waiting:  # a module called twice in one forward: count its first call
            return
        waiting.discard(tm.name)
        shared = next((st for t, st in seen if t is x), None)
        if shared is not None:
            stats.setdefault(tm.name, shared)
        else:
            st = stats.setdefault(tm.name, InputStats(tm.d_in, x.device, gram))
            st.add(x)
            seen.append((x, st))
        if not waiting:
            raise _Stop

    handles = [tm.module.register_forward_pre_hook(lambda _m, inp, tm=tm: hook(tm, inp[0]))
               for tm in modules]
    try:
        for c, h in zip(calls, hidden, strict=True):
            seen.clear()
            waiting.update(tm.name for tm in modules)
            with contextlib.suppress(_Stop):
                run_block(block, c, h)
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
    return stats
