"""``datainf``: the LayerIF paper's estimator, DataInf (Kwon et al., ICLR 2024), per block, on LoRA
tensors (per-example gradients kept) or on full weights (streamed in Kronecker form, none kept).

For one weight tensor w of block l (each tensor is its own block of the curvature, as in DataInf's
and the LayerIF authors' code), with per-example gradients ``g_i`` (``i`` over the ``n`` training
examples), ``G = (1/n) Σ_i g_i g_iᵀ`` and the summed query gradient ``q``, DataInf swaps the order of
the inverse and the average:

    (G + λI)^{-1} ≈ (1/n) Σ_i (g_i g_iᵀ + λI)^{-1} = (1/(nλ)) Σ_i (I − g_i g_iᵀ / (λ + g_iᵀ g_i))

(Sherman–Morrison per example), so

    I_w[k] = qᵀ (G + λI)^{-1} g_k ≈ (1/(nλ)) Σ_i ( qᵀ g_k − (qᵀ g_i)(g_iᵀ g_k) / (λ + g_iᵀ g_i) )
           = (n c_k − g_kᵀ u) / (nλ),   c_i = qᵀ g_i,   u = Σ_i c_i g_i / (λ + ‖g_i‖²),

with ``λ_w = mean_i(‖g_i‖² / d_w) / 10`` (``lambda_scale``; DataInf's ``compute_hvp_proposed``).
``I[l, k] = Σ_{w ∈ l} I_w[k]`` in the framework's sign (positive = helpful); DataInf and the LayerIF
authors report ``−I``. The second form costs O(n·d) per tensor, not the O(n²·d) of the Gram matrix.

A hook on each tracked ``nn.Linear`` sees ``a`` ``[B, T, d_in]`` and ``δ`` ``[B, T, d_out]``, and
``g_b = Σ_t δ_{b,t} a_{b,t}ᵀ`` (a bias is one more input column ``a' = [a, 1]``). Two modes:

- ``stored``: one batched pass keeps every ``g_i`` (``[n, d_w]`` per tensor): right for LoRA tensors,
  two passes in all.
- ``streaming``: nothing per example but scalars. A validation pass for ``q``; a training pass for
  ``c_i = Σ_t δ_tᵀ q a'_t`` and ``s_i = ‖g_i‖²``, the latter as the token Gram
  ``Σ_{t,s} (δ_t·δ_s)(a'_t·a'_s)`` (``~T²(d_in+d_out)``) or by forming ``g_i`` (``~T·d_in·d_out``),
  whichever is cheaper at the batch's T; λ from the ``s_i``; a training pass accumulating
  ``u = Σ_i w_i g_i``, ``w_i = c_i / (λ + s_i)``, as one backward with ``δ`` scaled per example; a
  training pass for ``g_kᵀ u = Σ_t δ_tᵀ u a'_t``. Memory O(weights): ``q`` and ``u``.

``auto`` stores when every tracked tensor's per-example gradients together fit ``memory_gb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_
from layerif_core.errors import DataError, NumericalError
from layerif_core.estimators.kronecker import add_mm_f32_, mm_f32, run_pass
from layerif_core.estimators.memory import Group, Plan, plan_partitions, resolve_budget, size
from layerif_core.estimators.options import DataInfOptions
from layerif_core.layers import TrackedModule

GB = 1024**3
# the token Gram is used when _GRAM_FACTOR · T · (d_in' + d_out) < d_in' · d_out (tests force a branch)
_GRAM_FACTOR = 1.0
# the direct branch forms g for this many bytes of examples at a time
_DIRECT_CHUNK_BYTES = 256 * 2**20


def default_lambda(grads: torch.Tensor, scale: float = 10.0) -> float:
    """``mean_i(‖g_i‖² / d) / scale`` for per-example gradients ``grads`` ``[N, d]``."""
    g = grads.double()
    return lambda_from_norms(g.pow(2).sum(dim=1), g.shape[1], scale)


def lambda_from_norms(sq_norms: torch.Tensor, d: int, scale: float = 10.0) -> float:
    """``mean_i(s_i / d) / scale`` from the squared norms ``s_i = ‖g_i‖²`` ``[N]``."""
    return float((sq_norms.double() / d).mean() / scale)


def combine(c: torch.Tensor, gu: torch.Tensor, lam: float) -> torch.Tensor:
    """``(n c_k − g_kᵀ u) / (n λ)`` per k, float64: ``c`` and ``gu`` ``[N]``."""
    n = c.shape[0]
    return (n * c.double() - gu.double()) / (n * lam)


def datainf_influence(grads: torch.Tensor, q: torch.Tensor, lam: float) -> torch.Tensor:
    """DataInf's ``qᵀ (G + λI)^{-1} g_k`` per k: ``grads`` ``[N, d]``, ``q`` ``[d]`` → ``[N]`` (float64)."""
    g, q = grads.double(), q.double()
    c = g @ q  # [N]  qᵀ g_i
    u = g.T @ (c / (lam + g.pow(2).sum(dim=1)))  # [d]  Σ_i c_i g_i / (λ + ‖g_i‖²)
    return combine(c, g @ u, lam)


def example_gradients(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-example weight (and bias) gradients of one module, flattened: ``[B, d_out·(d_in (+1))]``."""
    # a: [B, T, d_in]; delta: [B, T, d_out]; g: [B, d_out, d_in (+1)]
    g = torch.einsum("bto,bti->boi", delta, a)
    if tm.has_bias:
        g = torch.cat([g, delta.sum(dim=1)[:, :, None]], dim=2)
    return g.flatten(1)


def _width(tm: TrackedModule) -> int:
    """``d_w = d_out · d_in'`` (``d_in' = d_in + 1`` with a bias)."""
    return tm.d_out * (tm.d_in + int(tm.has_bias))


def gradient_bytes(ctx: RunContext, n: int) -> int:
    """Bytes of the per-example gradients of ``n`` examples over every tracked module (float32)."""
    return 4 * n * sum(_width(tm) for tm in ctx.layer_map.modules())


def _indexed(ctx: RunContext) -> tuple[dict[str, torch.Tensor], Callable[[Batch], None]]:
    """A dict holding the current batch's example indices (on the device) and the ``on_batch``
    callback that fills it."""
    current: dict[str, torch.Tensor] = {}

    def remember(batch: Batch) -> None:
        current["index"] = batch.index.to(ctx.device)

    return current, remember


def per_example_gradients(ctx: RunContext, split: TokenizedSplit,
                          modules: list[TrackedModule] | None = None) -> dict[str, torch.Tensor]:
    """The per-example gradients ``[N, d_m]`` (float32, on the device) of ``modules`` (default: every
    tracked module): one batched backward per batch, then summed over ranks."""
    modules = modules if modules is not None else ctx.layer_map.modules()
    rows = {tm.name: torch.zeros(len(split), _width(tm), device=ctx.device) for tm in modules}
    current, remember = _indexed(ctx)

    def collect(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        rows[tm.name][current["index"]] = example_gradients(tm, a, delta)

    run_pass(ctx, split, f"datainf per-example gradients ({split.name})", on_backward=collect,
             on_batch=remember, modules=modules)
    for v in rows.values():
        all_reduce_(v)
    return rows


def weighted_gradient(ctx: RunContext, split: TokenizedSplit, modules: list[TrackedModule],
                      description: str, weights: dict[str, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
    """``Σ_i w_{m,i} ∇_{W_m} L(z_i)`` per module, ``[d_out, d_in (+1)]`` float32: the query gradient
    ``q`` (``weights`` None: all ones) or DataInf's ``u`` (``weights[m]`` ``[N]``), accumulated as
    ``(w ∘ δ)ᵀ a`` per batch, a matmul in the model's dtype with float32 output."""
    acc = {tm.name: torch.zeros(tm.d_out, tm.d_in + int(tm.has_bias), device=ctx.device)
           for tm in modules}
    current, remember = _indexed(ctx)

    def accumulate(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # a: [B, T, d_in]; delta: [B, T, d_out]; w: [B]
        if weights is not None:
            w = weights[tm.name][current["index"]].float()
            delta = (delta * w[:, None, None]).to(delta.dtype)
        add_mm_f32_(acc[tm.name][:, : tm.d_in], delta.flatten(0, 1).T, a.flatten(0, 1))
        if tm.has_bias:
            acc[tm.name][:, tm.d_in] += delta.sum(dim=(0, 1), dtype=torch.float32)

    run_pass(ctx, split, description, on_backward=accumulate, on_batch=remember, modules=modules,
             dtype=None)
    for v in acc.values():
        all_reduce_(v)
    return acc


def _operand(ctx: RunContext, mat: torch.Tensor, tm: TrackedModule
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``[d_out, d_in (+1)]`` matrix as ``(Wᵀ [d_in, d_out], bias column or None)``, ``Wᵀ`` in the
    model's dtype on a GPU (a matmul with float32 output), float32 elsewhere."""
    cast = ctx.dtype if ctx.device.type == "cuda" else torch.float32
    w = mat[:, : tm.d_in].T.to(cast)
    return w, (mat[:, tm.d_in] if tm.has_bias else None)


def contract(a: torch.Tensor, delta: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None
             ) -> torch.Tensor:
    """``⟨V, g_b⟩ = Σ_t δ_{b,t}ᵀ (V a_{b,t} + v_bias)`` per example, ``[B]`` float64; ``wt`` is ``Vᵀ``."""
    # a: [B, T, d_in]; delta: [B, T, d_out]; va: [B·T, d_out] float32
    va = mm_f32(a.flatten(0, 1), wt)
    if bias is not None:
        va += bias
    return va.view(delta.shape).mul_(delta).sum(dim=(1, 2), dtype=torch.float64)


def gram_norms(a: torch.Tensor, delta: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """``‖g_b‖² = Σ_{t,s} (δ_t·δ_s)(a'_t·a'_s)`` per example, ``[B]`` float64 (``a' = [a, 1]`` with a
    bias), without forming ``g_b``: two ``[T, T]`` Grams per example."""
    # a: [B, T, d_in]; delta: [B, T, d_out]; aa, dd: [B, T, T] float32
    aa = mm_f32(a, a.transpose(1, 2))
    if has_bias:
        aa += 1.0
    dd = mm_f32(delta, delta.transpose(1, 2))
    return aa.mul_(dd).sum(dim=(1, 2), dtype=torch.float64)


def direct_norms(a: torch.Tensor, delta: torch.Tensor, qw: torch.Tensor, qb: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qᵀ g_b, ‖g_b‖²)`` per example, ``[B]`` float64 each, by forming ``g_b = Σ_t δ_tᵀ a_t``, a few
    examples at a time (``qw`` ``[d_out, d_in]``, ``qb`` ``[d_out]`` or None)."""
    # a: [B, T, d_in]; delta: [B, T, d_out]; g: [b, d_out, d_in] float32
    step = max(1, _DIRECT_CHUNK_BYTES // (4 * qw.numel()))
    c, s = [], []
    for lo in range(0, a.shape[0], step):
        d, x = delta[lo: lo + step], a[lo: lo + step]
        g = mm_f32(d.transpose(1, 2), x).flatten(1)
        c.append((g @ qw.flatten()).double())
        s.append(torch.linalg.vector_norm(g, dim=1).double().pow(2))
        if qb is not None:
            gb = d.sum(dim=1, dtype=torch.float32)  # [b, d_out]
            c[-1] += (gb @ qb).double()
            s[-1] += gb.double().pow(2).sum(dim=1)
    return torch.cat(c), torch.cat(s)


def use_gram(tokens: int, tm: TrackedModule) -> bool:
    """Whether the token Gram (``~T²(d_in'+d_out)`` per example) is cheaper than forming ``g``
    (``~T·d_in'·d_out``) at ``tokens`` = T positions."""
    d_in = tm.d_in + int(tm.has_bias)
    return _GRAM_FACTOR * tokens * (d_in + tm.d_out) < d_in * tm.d_out


@dataclass
class Norms:
    """``c_i = qᵀ g_i`` and ``s_i = ‖g_i‖²`` per module (``[N]`` float64), and how often (module ×
    batch) each way of computing ``s`` ran."""

    c: dict[str, torch.Tensor]
    s: dict[str, torch.Tensor]
    branches: dict[str, int] = field(default_factory=lambda: {"gram": 0, "direct": 0})


def norms_pass(ctx: RunContext, train: TokenizedSplit, modules: list[TrackedModule],
               q: dict[str, torch.Tensor]) -> Norms:
    """One training pass giving ``c`` and ``s`` of every example for ``modules`` (summed over ranks)."""
    n = len(train)
    out = Norms({tm.name: torch.zeros(n, dtype=torch.float64, device=ctx.device) for tm in modules},
                {tm.name: torch.zeros(n, dtype=torch.float64, device=ctx.device) for tm in modules})
    ops = {tm.name: _operand(ctx, q[tm.name], tm) for tm in modules}
    plain = {tm.name: q[tm.name][:, : tm.d_in].contiguous() for tm in modules}
    current, remember = _indexed(ctx)

    def hook(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        if use_gram(a.shape[1], tm):
            c, s = contract(a, delta, *ops[tm.name]), gram_norms(a, delta, tm.has_bias)
            out.branches["gram"] += 1
        else:
            c, s = direct_norms(a, delta, plain[tm.name], ops[tm.name][1])
            out.branches["direct"] += 1
        out.c[tm.name].index_add_(0, current["index"], c)
        out.s[tm.name].index_add_(0, current["index"], s)

    run_pass(ctx, train, f"datainf norms ({train.name})", on_backward=hook, on_batch=remember,
             modules=modules, dtype=None)
    for v in [*out.c.values(), *out.s.values()]:
        all_reduce_(v)
    return out


def products_pass(ctx: RunContext, train: TokenizedSplit, modules: list[TrackedModule],
                  u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One training pass giving ``g_kᵀ u`` of every example per module, ``[N]`` float64."""
    gu = {tm.name: torch.zeros(len(train), dtype=torch.float64, device=ctx.device) for tm in modules}
    ops = {tm.name: _operand(ctx, u[tm.name], tm) for tm in modules}
    current, remember = _indexed(ctx)

    def hook(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        gu[tm.name].index_add_(0, current["index"], contract(a, delta, *ops[tm.name]))

    run_pass(ctx, train, f"datainf scores ({train.name})", on_backward=hook, on_batch=remember,
             modules=modules, dtype=None)
    for v in gu.values():
        all_reduce_(v)
    return gu


class DataInf:
    """DataInf influence per block, each weight tensor its own curvature block (see the module doc)."""

    def __init__(self, config: DataInfOptions | None = None):
        self.config = config or DataInfOptions()
        self.lambdas: dict[str, float] = {}
        self.zero_modules: list[str] = []

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """Check the inputs (nothing to fit: DataInf's curvature is the training gradients themselves)."""
        if len(train) < 2:
            raise DataError(f"datainf needs at least 2 training examples ('{train.name}' has "
                            f"{len(train)}); raise the train split's limit.")
        _check_adapter_base(ctx)

    def mode(self, ctx: RunContext, n: int) -> str:
        """``stored`` or ``streaming``: the option, or (``auto``) stored when the per-example
        gradients of all tracked modules fit ``memory_gb``."""
        if self.config.mode != "auto":
            return self.config.mode
        need = gradient_bytes(ctx, n)
        mode = "stored" if need <= self.config.memory_gb * GB else "streaming"
        ctx.log.info("datainf: per-example gradients of %d examples would take %s (memory_gb %g): %s",
                     n, size(need), self.config.memory_gb, mode)
        return mode

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        self.fit(ctx, train)
        mode = self.mode(ctx, len(train))
        plan = self.plan(ctx, len(train), mode)
        scores = torch.zeros(len(ctx.layer_map), len(train), dtype=torch.float64, device=ctx.device)
        self.lambdas, self.zero_modules = {}, []
        branches = {"gram": 0, "direct": 0}
        for p in range(plan.P):
            modules = plan.modules(p)
            q = weighted_gradient(ctx, query, modules, f"datainf query gradient ({query.name})")
            if mode == "stored":
                self._stored(ctx, train, q, modules, scores)
            else:
                for k, v in self._streaming(ctx, train, q, modules, scores).items():
                    branches[k] += v
        self._report_zero(ctx)
        record = {"mode": mode, "lambdas": self.lambdas, "zero_gradient_modules": self.zero_modules,
                  "plan": plan.to_json()}
        if mode == "streaming":
            record["norm_branches"] = branches
        ctx.run_dir.manifest.setdefault("datainf", {})[train.name] = record
        return scores.float()

    def plan(self, ctx: RunContext, n: int, mode: str = "stored") -> Plan:
        """Module partitions that fit the device budget (architecture §8): per module, the
        per-example gradients ``n × d_m`` (stored) or ``q`` and ``u`` plus three ``[n]`` float64
        vectors (streaming); the passes run once per partition."""
        budget = resolve_budget(self.config.memory_budget_gb, ctx.device)
        if mode == "stored":
            stage, need = "datainf per-example gradients", lambda g: 4 * n * _width(g.modules[0])
        else:
            stage, need = "datainf q and u", lambda g: 2 * 4 * _width(g.modules[0]) + 3 * 8 * n
        plan = plan_partitions(stage, [Group([tm]) for tm in ctx.layer_map.modules()], need, budget)
        ctx.log.info(plan.describe())
        return plan

    def _lambda(self, tm: TrackedModule, sq_norms: torch.Tensor) -> float | None:
        """λ of one tensor from its ``s_i``, recorded; None (and the tensor noted) when every
        gradient is zero."""
        lam = self.config.damping or lambda_from_norms(sq_norms, _width(tm), self.config.lambda_scale)
        if not math.isfinite(lam) or not bool(torch.isfinite(sq_norms).all()):
            raise NumericalError(f"datainf: the gradients of {tm.name} are not finite; check the "
                                 "model's dtype (try float32).")
        self.lambdas[tm.name] = lam
        if not bool(sq_norms.any()):
            self.zero_modules.append(tm.name)
            return None
        return lam

    def _stored(self, ctx: RunContext, train: TokenizedSplit, q: dict[str, torch.Tensor],
                modules: list[TrackedModule], scores: torch.Tensor) -> None:
        grads = per_example_gradients(ctx, train, modules)
        for tm in modules:
            g = grads.pop(tm.name)
            lam = self._lambda(tm, g.double().pow(2).sum(dim=1))
            if lam is not None:
                scores[tm.layer] += datainf_influence(g, q[tm.name].flatten(), lam)

    def _streaming(self, ctx: RunContext, train: TokenizedSplit, q: dict[str, torch.Tensor],
                   modules: list[TrackedModule], scores: torch.Tensor) -> dict[str, int]:
        """Three training passes for ``modules``: ``c`` and ``s``; ``u``; ``g_kᵀ u``."""
        norms = norms_pass(ctx, train, modules, q)
        q.clear()
        lambdas = {tm.name: self._lambda(tm, norms.s[tm.name]) for tm in modules}
        live = [tm for tm in modules if lambdas[tm.name] is not None]
        if not live:
            return norms.branches
        weights = {tm.name: norms.c[tm.name] / (lambdas[tm.name] + norms.s[tm.name]) for tm in live}
        u = weighted_gradient(ctx, train, live, f"datainf weighted gradient ({train.name})", weights)
        gu = products_pass(ctx, train, live, u)
        for tm in live:
            scores[tm.layer] += combine(norms.c[tm.name], gu[tm.name], lambdas[tm.name])
        return norms.branches

    def _report_zero(self, ctx: RunContext) -> None:
        zero = set(self.zero_modules)
        for layer, modules in enumerate(ctx.layer_map.layers):
            names = [tm.short for tm in modules if tm.name in zero]
            if names and len(names) == len(modules):
                ctx.log.warning("datainf: every training gradient of block %d is zero (%s); block %d "
                                "is scored 0", layer, ", ".join(names), layer)
            elif names:
                ctx.log.warning("datainf: zero training gradients in block %d for %s (a LoRA A matrix "
                                "is zero-gradient while its B is still zero, i.e. an untrained "
                                "adapter); they add 0", layer, ", ".join(names))


def _check_adapter_base(ctx: RunContext) -> None:
    """Warn when ``model.adapter`` was fine-tuned (by `layerif finetune`) on another ``model.source``."""
    import json

    adapter = ctx.config.model.adapter
    state = Path(adapter) / "layerif_finetune.json" if adapter else None
    if state is None or not state.is_file():
        return
    base = json.loads(state.read_text()).get("base")
    if base is not None and base != ctx.config.model.source:
        ctx.log.warning("datainf: adapter '%s' was fine-tuned on '%s', not on model.source '%s'; its "
                        "influences describe another model", adapter, base, ctx.config.model.source)
