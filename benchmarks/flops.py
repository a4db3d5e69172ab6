"""The FLOP floor of an influence run: the matmul FLOPs an estimator cannot avoid, divided by the
device's measured matmul throughput in the model's dtype (used by ``bench_estimators`` and
``bench_gpu``).

Per token and tracked linear module ``y = W ã`` (``d'`` = ``d_in`` (+1 for a bias), ``d_out``):

- every pass (fit, query, score): forward ``2 d_in d_out`` and the input gradient ``2 d_in d_out``
  of *every* linear map of the model (lm_head included; parameters frozen, so no weight gradient),
  plus causal attention ``6 T d_attn`` per layer (QKᵀ and AV forward, four products backward, half
  of each skipped by the causal mask);
- EK-FAC's covariances: ``2 d'²`` per shared-input group (one A for q/k/v) and ``2 d_out²`` per
  module;
- the correction pass: the rotations ``ã Q_A`` (``2 d'²`` per group) and ``δ Q_S`` (``2 d_out²`` per
  module), and per example the rotated gradient ``Σ_t rδ_t raᵀ_t``: ``2 T d_out d'`` per module;
- the query gradient ``Σ_t δ_t ãᵀ_t`` (``2 d_out d'`` per query token) and the score ``δᵀ V ã``
  (``2 d_out d'`` per train token) per module.
Eigendecompositions are not matmuls and are reported separately.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int | None = None,
                            seconds: float = 1.0) -> float:
    """Measured throughput of square ``n × n`` matmuls in ``dtype`` on ``device`` (FLOP/s)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _sync(device)
    a @ b  # warm-up
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def linear_params(model: nn.Module) -> int:
    """``Σ d_in d_out`` over every linear map of the model (tied lm_head counted once as a map)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif type(m).__name__ == "Conv1D":  # GPT-2
            total += m.weight.shape[0] * m.weight.shape[1]
    return total


def attention_width(model: nn.Module) -> tuple[int, int]:
    """``(layers, heads × head_dim)`` from the model's config."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return layers, heads * head_dim


def pass_flops(model: nn.Module, n_seqs: int, seq_len: int) -> float:
    """Forward plus input-gradient backward of the whole model over ``n_seqs × seq_len`` tokens."""
    layers, width = attention_width(model)
    tokens = n_seqs * seq_len
    return 4.0 * linear_params(model) * tokens + 6.0 * layers * width * seq_len * tokens


def ekfac_flops(model: nn.Module, groups, n_train: int, n_query: int, seq_len: int,
                estimator: str = "ekfac") -> dict[str, float]:
    """The unavoidable matmul FLOPs of ``estimator`` (``ekfac``, ``kfac`` or ``grad_dot``) by part.

    ``groups``: the shared-input groups of tracked modules
    (:func:`layerif_core.estimators.factors.module_groups`)."""
    train_tokens, query_tokens = n_train * seq_len, n_query * seq_len
    mods = [(tm, g.d_in) for g in groups for tm in g.modules]
    grad_size = sum(tm.d_out * d for tm, d in mods)
    fit_passes = {"ekfac": 2, "kfac": 1, "grad_dot": 0}[estimator]
    out = {
        "passes": (fit_passes + 1) * pass_flops(model, n_train, seq_len)
        + pass_flops(model, n_query, seq_len),
        "query_and_score": 2.0 * grad_size * (train_tokens + query_tokens),
    }
    if estimator in ("ekfac", "kfac"):
        sq = sum(g.d_in**2 for g in groups) + sum(tm.d_out**2 for tm, _ in mods)
        out["covariances"] = 2.0 * sq * train_tokens
        out["precondition"] = sum(4.0 * (tm.d_out**2 * d + tm.d_out * d**2) for tm, d in mods)
    if estimator == "ekfac":
        out["correction"] = 2.0 * sq * train_tokens + 2.0 * grad_size * seq_len * n_train
    out["total"] = sum(out.values())
    return out
