"""The mixture-of-LoRA-experts layer, as a peft ``LoraVariant`` of a peft ``lora.Linear``.

peft injects one LoRA pair ``(A_0, B_0)`` (``lora_A``/``lora_B``) per target module and keeps the base
weight frozen. For a module with ``n > 1`` experts, :class:`MoeExperts` adds ``n − 1`` more pairs and a
router, and :class:`MoeLoraVariant` replaces peft's LoRA forward with the mixture::

    p = softmax(R x)                      router probabilities, R: [n, d_in]
    g = p[top-k] / Σ p[top-k]             softmax over the top-k logits, 0 elsewhere
    y = W x + (alpha / r) · Σ_e g_e B_e A_e dropout(x)

A module with ``n = 1`` keeps peft's plain LoRA forward untouched. Routing is batched: every expert's
``A_e x`` is one einsum over all tokens, the gates are scattered into a dense ``[N, n]`` matrix and
multiply them, so the cost is that of a plain LoRA of rank ``n·r`` plus the router; no loop over tokens.

Load balancing (Switch Transformer, Fedus et al. 2022, eq. 4, with top-k dispatch)::

    aux = n · Σ_e f_e · P_e,   f_e = (1 / (N k)) Σ_t 1[e ∈ top-k(t)],   P_e = (1/N) Σ_t p_e(t)

over the N non-padding tokens; it is 1 under perfectly balanced routing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora.layer import LoraVariant
from torch import nn

_STATE: dict[str, torch.Tensor | None] = {"mask": None}


@contextmanager
def token_mask(mask: torch.Tensor | None) -> Iterator[None]:
    """Count only the tokens where ``mask`` ([B, T], nonzero = real token) in the routing statistics."""
    old = _STATE["mask"]
    _STATE["mask"] = None if mask is None else mask.reshape(-1).bool()
    try:
        yield
    finally:
        _STATE["mask"] = old


def switch_aux_loss(probs: torch.Tensor, chosen: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch load-balancing loss ``n Σ_e f_e P_e`` of ``probs`` [N, n] and the 0/1 ``chosen`` [N, n]."""
    n_tokens, n_experts = probs.shape
    f = chosen.sum(0) / (n_tokens * top_k)
    p = probs.mean(0)
    return n_experts * (f * p).sum()


class MoeExperts(nn.Module):
    """Experts 1..n−1 of one module (expert 0 is peft's ``lora_A``/``lora_B``) and the router."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_experts: int, top_k: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        super().__init__()
        self.n_experts, self.top_k = n_experts, min(top_k, n_experts)
        self.A = nn.Parameter(torch.empty(n_experts - 1, rank, d_in, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(n_experts - 1, d_out, rank, dtype=dtype, device=device))
        self.router = nn.Linear(d_in, n_experts, bias=False, dtype=dtype, device=device)
        for e in range(n_experts - 1):  # as peft initialises lora_A
            nn.init.kaiming_uniform_(self.A.data[e], a=math.sqrt(5))
        self.aux: torch.Tensor | None = None
        self.counts = torch.zeros(n_experts, dtype=torch.float64)
        self.record = False

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Gates ``[N, n]`` of the tokens ``x`` [N, d_in]; sets ``self.aux`` and counts usage."""
        probs = torch.softmax(self.router(x).float(), dim=-1)  # [N, n]
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # [N, k]
        gates = torch.zeros_like(probs).scatter(1, top_i, top_p / top_p.sum(-1, keepdim=True))
        chosen = torch.zeros_like(probs).scatter(1, top_i, 1.0)
        mask = _STATE["mask"]
        if mask is not None and mask.numel() == x.shape[0]:
            mask = mask.to(x.device)
            probs, chosen = probs[mask], chosen[mask]
        if probs.shape[0] > 0:
            self.aux = switch_aux_loss(probs, chosen, self.top_k)
            if self.record:  # stays on the device: no host sync per forward
                self.counts = self.counts.to(chosen.device) + chosen.detach().sum(0).double()
        return gates


def moe_delta(module: nn.Module, adapter: str, x: torch.Tensor) -> torch.Tensor:
    """``(alpha/r) Σ_e g_e B_e A_e dropout(x)`` for the tokens ``x`` [..., d_in] → [..., d_out]."""
    moe: MoeExperts = module.lora_moe[adapter]
    a = torch.cat([module.lora_A[adapter].weight[None], moe.A])  # [n, r, d_in]
    b = torch.cat([module.lora_B[adapter].weight[None], moe.B])  # [n, d_out, r]
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # [N, d_in]
    gates = moe.route(flat).to(a.dtype)  # [N, n]
    h = module.lora_dropout[adapter](flat)
    z = torch.einsum("nd,erd->ner", h, a) * gates[:, :, None]  # [N, n, r]
    delta = torch.einsum("ner,eor->no", z, b) * module.scaling[adapter]  # [N, d_out]
    return delta.reshape(*lead, b.shape[1])


class MoeLoraVariant(LoraVariant):
    """peft LoRA variant whose forward is the top-k mixture of the module's experts."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: nn.Module, adapter_name: str, **kwargs) -> None:
        """Nothing to do: :func:`attach_experts` adds the experts after peft's injection."""

    @staticmethod
    def forward(module: nn.Module, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs) -> torch.Tensor:
        return result + moe_delta(module, active_adapter, x).to(result.dtype)

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        raise NotImplementedError("a mixture of LoRA experts is input-dependent and cannot be merged")

    merge_unsafe = merge_safe
    unmerge = merge_safe


def attach_experts(module: nn.Module, adapter: str, n_experts: int, top_k: int) -> MoeExperts:
    """Give the peft ``lora.Linear`` ``module`` ``n_experts`` experts (n ≥ 2) and a router."""
    lora_a = module.lora_A[adapter].weight  # [r, d_in]
    lora_b = module.lora_B[adapter].weight  # [d_out, r]
    moe = MoeExperts(lora_a.shape[1], lora_b.shape[0], lora_a.shape[0], n_experts, top_k,
                     dtype=lora_a.dtype, device=lora_a.device)
    if not hasattr(module, "lora_moe"):
        module.lora_moe = nn.ModuleDict()
    module.lora_moe[adapter] = moe
    module.lora_variant[adapter] = MoeLoraVariant()
    return moe
