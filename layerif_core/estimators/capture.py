"""Hooks that expose, for every tracked module, its input ``a`` and output gradient ``δ``.

With ``y = W a (+ b)`` the gradient of the summed loss with respect to ``W`` is ``Σ_t δ_tᵀ a_t``,
so every quantity an estimator needs (query gradients, K-FAC factors, per-example scores) is a
contraction of ``a`` and ``δ``; no parameter gradient is ever formed. Parameters are frozen during
capture and the embedding output is made to require grad, so the backward pass computes activation
gradients only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from layerif_core.layers import TrackedModule

# on_backward(module, a [B, T, d_in], delta [B, T, d_out]) — float32, or the model's dtype
BackwardFn = Callable[[TrackedModule, torch.Tensor, torch.Tensor], None]
# on_forward(module, a [B, T, d_in]) — float32, or the model's dtype
ForwardFn = Callable[[TrackedModule, torch.Tensor], None]


@contextmanager
def frozen_with_input_grad(model: nn.Module) -> Iterator[None]:
    """Freeze every parameter and make the input embeddings' output require grad, restoring after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def capture(modules: list[TrackedModule], on_backward: BackwardFn | None = None,
            on_forward: ForwardFn | None = None, batch_size: Callable[[], int] | None = None,
            dtype: torch.dtype | None = torch.float32) -> Iterator[None]:
    """Call ``on_forward``/``on_backward`` with ``a``/``δ`` of each module in ``modules``.

    Both are given as ``[B, T, d]``; models that flatten tokens before a linear layer (OPT's MLP
    sees ``[B·T, d]``) are reshaped back using ``batch_size()``, the current batch's size.
    ``dtype`` float32 casts them (a copy when the model runs in bf16); ``None`` hands over the
    model's own tensors, for consumers that accumulate in float32 themselves (matmuls with float32
    output, :func:`layerif_core.estimators.kronecker.mm_f32`) without an fp32 copy of every activation.
    """
    def cast(x: torch.Tensor) -> torch.Tensor:
        return x if dtype is None else x.to(dtype)

    handles = []

    def tokens(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return x
        if batch_size is None:
            raise ValueError("a tracked module sees flattened tokens; pass batch_size to capture()")
        return x.reshape(batch_size(), -1, x.shape[-1])

    def hook(tm: TrackedModule) -> Callable:
        def forward(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            a = tokens(inputs[0].detach())
            if on_forward is not None:
                on_forward(tm, cast(a))
            if on_backward is not None and output.requires_grad:
                output.register_hook(lambda d: on_backward(tm, cast(a), cast(tokens(d.detach()))))
        return forward

    for tm in modules:
        handles.append(tm.module.register_forward_hook(hook(tm)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
