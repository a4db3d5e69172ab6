"""``datainf``: the LayerIF paper's estimator, DataInf (Kwon et al., ICLR 2024), on per-example
gradients of each block's LoRA parameters.

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

Every block's per-example gradients come from the same batched pass: a hook on each tracked LoRA
``nn.Linear`` sees ``a`` ``[B, T, d_in]`` and ``δ`` ``[B, T, d_out]``, and ``g_b = Σ_t δ_{b,t} a_{b,t}ᵀ``.
They are kept in memory, or in memory-mapped files in the run directory when they exceed
``memory_gb``; the estimator refuses (saying how much it would need) above ``max_gradient_gb``, as on
the full weights of a large model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_, world
from layerif_core.errors import ConfigError, DataError, NumericalError
from layerif_core.estimators.kronecker import query_gradient, run_pass
from layerif_core.estimators.memory import Group, Plan, plan_partitions, resolve_budget
from layerif_core.estimators.options import DataInfOptions
from layerif_core.layers import TrackedModule

GB = 1024**3


def default_lambda(grads: torch.Tensor, scale: float = 10.0) -> float:
    """``mean_i(‖g_i‖² / d) / scale`` for per-example gradients ``grads`` ``[N, d]``."""
    g = grads.double()
    return float((g.pow(2).sum(dim=1) / g.shape[1]).mean() / scale)


def datainf_influence(grads: torch.Tensor, q: torch.Tensor, lam: float) -> torch.Tensor:
    """DataInf's ``qᵀ (G + λI)^{-1} g_k`` per k: ``grads`` ``[N, d]``, ``q`` ``[d]`` → ``[N]`` (float64)."""
    g, q = grads.double(), q.double()
    n = g.shape[0]
    c = g @ q  # [N]  qᵀ g_i
    u = g.T @ (c / (lam + g.pow(2).sum(dim=1)))  # [d]  Σ_i c_i g_i / (λ + ‖g_i‖²)
    return (n * c - g @ u) / (n * lam)


def example_gradients(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-example weight (and bias) gradients of one module, flattened: ``[B, d_out·(d_in (+1))]``."""
    # a: [B, T, d_in]; delta: [B, T, d_out]; g: [B, d_out, d_in (+1)]
    g = torch.einsum("bto,bti->boi", delta, a)
    if tm.has_bias:
        g = torch.cat([g, delta.sum(dim=1)[:, :, None]], dim=2)
    return g.flatten(1)


class GradientStore:
    """Per-example gradients ``[N, d_m]`` per module: tensors in memory, or memory-mapped files."""

    def __init__(self, sizes: dict[str, int], n: int, device: torch.device, directory: Path | None):
        self.directory = directory
        self.device = device
        self.rows: dict[str, torch.Tensor | np.memmap] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        for i, (name, d) in enumerate(sizes.items()):
            if directory is None:
                self.rows[name] = torch.zeros(n, d, device=device)
            else:
                path = directory / f"{i:04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.f32"
                self.rows[name] = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))

    def put(self, name: str, index: torch.Tensor, rows: torch.Tensor) -> None:
        store = self.rows[name]
        if isinstance(store, torch.Tensor):
            store[index.to(store.device)] = rows
        else:
            store[index.cpu().numpy()] = rows.cpu().numpy()

    def get(self, name: str) -> torch.Tensor:
        store = self.rows[name]
        return store if isinstance(store, torch.Tensor) else torch.from_numpy(np.asarray(store)).to(
            self.device)

    def all_reduce(self) -> None:
        for store in self.rows.values():
            if isinstance(store, torch.Tensor):
                all_reduce_(store)

    def close(self) -> None:
        self.rows.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def per_example_gradients(ctx: RunContext, split: TokenizedSplit, store: GradientStore,
                          modules: list[TrackedModule] | None = None) -> None:
    """Fill ``store`` with the per-example gradients of ``modules`` (default: every tracked module):
    one batched backward per batch."""
    current: dict[str, torch.Tensor] = {}

    def remember(batch: Batch) -> None:
        current["index"] = batch.index

    def collect(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        store.put(tm.name, current["index"], example_gradients(tm, a, delta))

    run_pass(ctx, split, f"per-example gradients ({split.name})", on_backward=collect, on_batch=remember,
             modules=modules)
    store.all_reduce()


def gradient_bytes(ctx: RunContext, n: int) -> int:
    """Bytes of the per-example gradients of ``n`` examples over every tracked module (float32)."""
    return 4 * n * sum(tm.d_out * (tm.d_in + int(tm.has_bias)) for tm in ctx.layer_map.modules())


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
        need = gradient_bytes(ctx, len(train))
        if need > self.config.max_gradient_gb * GB:
            params = need // (4 * len(train))
            raise ConfigError(
                f"datainf would keep {need / GB:.1f} GB of per-example gradients ({len(train)} examples "
                f"× {params:,} tracked parameters), above max_gradient_gb={self.config.max_gradient_gb:g}; "
                "track LoRA parameters (`layerif finetune`, then model.adapter and layers.lora_only: "
                "true), fewer examples or modules, or raise max_gradient_gb.")

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        self.fit(ctx, train)
        q = query_gradient(ctx, query)
        plan = self.plan(ctx, len(train))
        scores = torch.zeros(len(ctx.layer_map), len(train), dtype=torch.float64, device=ctx.device)
        self.lambdas, self.zero_modules = {}, []
        for p in range(plan.P):
            modules = plan.modules(p)
            store = self._store(ctx, len(train), modules)
            try:
                per_example_gradients(ctx, train, store, modules)
                scores += self._combine(ctx, store, q, modules)
            finally:
                store.close()
        self._report_zero(ctx)
        ctx.run_dir.manifest.setdefault("datainf", {})[train.name] = {
            "lambdas": self.lambdas, "zero_gradient_modules": self.zero_modules,
            "plan": plan.to_json()}
        return scores.float()

    def plan(self, ctx: RunContext, n: int) -> Plan:
        """Module partitions whose per-example gradients (``n × d_m`` float32 each) fit the device
        budget; the train pass runs once per partition (architecture §8)."""
        budget = resolve_budget(getattr(self.config, "memory_budget_gb", None), ctx.device)
        plan = plan_partitions("datainf per-example gradients",
                               [Group([tm]) for tm in ctx.layer_map.modules()],
                               lambda g: 4 * n * g.modules[0].d_out * g.d_in, budget)
        ctx.log.info(plan.describe())
        return plan

    def _store(self, ctx: RunContext, n: int, modules: list[TrackedModule]) -> GradientStore:
        sizes = {tm.name: tm.d_out * (tm.d_in + int(tm.has_bias)) for tm in modules}
        on_disk = 4 * n * sum(sizes.values()) > self.config.memory_gb * GB
        if on_disk and world()[1] > 1:
            raise ConfigError("datainf keeps per-example gradients on disk only in a single process; "
                              "raise memory_gb or run without torchrun.")
        directory = ctx.run_dir.file("datainf-gradients") if on_disk else None
        return GradientStore(sizes, n, ctx.device, directory)

    def _combine(self, ctx: RunContext, store: GradientStore, q: dict[str, torch.Tensor],
                 modules: list[TrackedModule]) -> torch.Tensor:
        n = next(iter(store.rows.values())).shape[0]
        scores = torch.zeros(len(ctx.layer_map), n, dtype=torch.float64, device=ctx.device)
        for tm in modules:
            grads = store.get(tm.name)
            lam = self.config.damping or default_lambda(grads, self.config.lambda_scale)
            if not np.isfinite(lam):
                raise NumericalError(f"datainf: the gradients of {tm.name} are not finite; check the "
                                     "model's dtype (try float32).")
            self.lambdas[tm.name] = lam
            if not bool(grads.any()):
                self.zero_modules.append(tm.name)
                continue
            scores[tm.layer] += datainf_influence(grads, q[tm.name].flatten(), lam)
        return scores

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
