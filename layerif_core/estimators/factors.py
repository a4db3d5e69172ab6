"""K-FAC / EK-FAC curvature factors of every tracked linear module (architecture §4, §8).

For ``y = W ã`` (``ã`` the input with a 1 appended when the module has a bias) the gradient of one
example is ``g_i = Σ_t δ_t ã_tᵀ``. K-FAC (Martens & Grosse 2015) approximates the per-example
Fisher ``G = E_i[vec g_i vec g_iᵀ]`` by ``A ⊗ S`` with

- ``A = (1/#tokens) Σ_tokens ã ãᵀ`` (padding tokens masked out),
- ``S = (1/#examples) Σ_examples Σ_t δ_t δ_tᵀ``,

so that ``A ⊗ S`` equals ``G`` whenever the ``δ`` do not depend on the inputs. The eigenbases
``A = Q_A Λ_A Q_Aᵀ``, ``S = Q_S Λ_S Q_Sᵀ`` are computed once. EK-FAC (George et al. 2018; Grosse et
al. 2023) keeps the bases and refits the eigenvalues per example in a second pass:
``Λ*[j, k] = E_i[(Q_Sᵀ g_i Q_A)[j, k]²]``.

Factors are a stream (architecture §8): modules that read the same input (q/k/v, gate/up) form one
group with one ``A`` and one ``Q_A``; each stage (``eigen``, ``lambda``) writes one file per group
under ``factors/<fingerprint>/<stage>/`` as soon as the group is finished
(:class:`~layerif_core.estimators.store.FactorStore`), and a rerun skips finished groups. The
fingerprint covers the model, the tracked modules, the train split, the Fisher option and the seed,
so a later run (or a second task with the same train split) reuses the factors. Each pass runs once
per module partition (:mod:`~layerif_core.estimators.memory`), the partitions chosen from the memory
budget. Covariances and rotations are matmuls in the model's dtype with float32 output; the
eigendecompositions are float64, split over ranks (rank r decomposes groups r, r+W, …).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping

import torch

from layerif_core.context import RunContext
from layerif_core.data import Batch, TokenizedSplit
from layerif_core.distributed import all_reduce_, owner, world
from layerif_core.errors import NumericalError
from layerif_core.estimators.damping import CurvatureOptions
from layerif_core.estimators.kronecker import add_mm_f32_, mm_f32, run_pass
from layerif_core.estimators.memory import (
    Group,
    Plan,
    correction_bytes,
    correction_reserve,
    covariance_bytes,
    plan_partitions,
    resolve_budget,
    shared_input_groups,
)
from layerif_core.estimators.store import FactorStore
from layerif_core.layers import TrackedModule


def augment(tm: TrackedModule, a: torch.Tensor) -> torch.Tensor:
    """``a`` with a column of ones appended when the module has a bias: ``[..., d_in (+1)]``."""
    if not tm.has_bias:
        return a
    return torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)


def token_mask(batch: Batch, n_tokens: int) -> torch.Tensor:
    """``[B, T]`` float mask of the examples' positions (not batch padding; the authors' pads, in
    the loss, count) for a module that sees ``n_tokens``."""
    mask = batch.positions().float()
    if mask.shape[1] >= n_tokens:
        return mask[:, :n_tokens]
    return torch.ones(mask.shape[0], n_tokens, device=mask.device)


def fit_fingerprint(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions) -> str:
    """The fingerprint of the factors fitted on ``train`` (the ``factors/<fingerprint>/`` folder)."""
    key = [ctx.model_fingerprint, ctx.config.layers.model_dump(), train.fingerprint, "kfac-factors",
           opts.fit_key(), ctx.seed]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def layout(stage: str, group: Group) -> dict[str, tuple[int, ...]]:
    """The tensors of one group's file: ``eigen``: ``QA, LA`` once and ``{m}.QS, {m}.LS`` per
    module; ``lambda``: ``{m}.Lambda`` ``[d_out, d']`` per module."""
    d = group.d_in
    if stage == "eigen":
        out = {"QA": (d, d), "LA": (d,)}
        for tm in group.modules:
            out[f"{tm.name}.QS"] = (tm.d_out, tm.d_out)
            out[f"{tm.name}.LS"] = (tm.d_out,)
        return out
    if stage == "lambda":
        return {f"{tm.name}.Lambda": (tm.d_out, d) for tm in group.modules}
    raise ValueError(f"unknown factor stage {stage!r}")


def module_groups(ctx: RunContext, split: TokenizedSplit) -> list[Group]:
    """The tracked modules grouped by shared input, detected on one forward of ``split``'s first
    example (the same on every rank)."""
    modules = ctx.layer_map.modules()
    example = None
    if len(split):
        batch = next(split.subset([0]).batches(1, ctx.pad_id)).to(ctx.device)
        example = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return shared_input_groups(ctx.model, modules, example)


def make_plan(ctx: RunContext, opts: CurvatureOptions, stage: str, groups: list[Group],
              need, reserve: int = 0) -> Plan:
    """Partition ``groups`` for ``stage`` within the memory budget and log the plan."""
    budget = resolve_budget(getattr(opts, "memory_budget_gb", None), ctx.device)
    plan = plan_partitions(stage, groups, need, budget, reserve)
    if groups:
        ctx.log.info(plan.describe())
    return plan


def open_store(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions) -> FactorStore:
    return FactorStore(ctx.run_dir, fit_fingerprint(ctx, train, opts), layout,
                       getattr(opts, "factor_offload", "cpu"))


def check_finite_factor(x: torch.Tensor, what: str, tm: TrackedModule | Group, dtype: torch.dtype
                        ) -> None:
    """Stop before an eigendecomposition (or a division) of a non-finite factor, naming the module."""
    if bool(torch.isfinite(x).all()):
        return
    name = tm.key if isinstance(tm, Group) else tm.name
    raise NumericalError(
        f"the {what} of module {name} is not finite (inf/NaN); its activations or output gradients "
        f"overflowed (the model runs in {str(dtype).removeprefix('torch.')}: load it in float32 or "
        "bfloat16, not float16) or its weights hold inf/NaN; fix the model and rerun (finished "
        "modules are kept).")


# --- stage 1: covariances and eigenbases -----------------------------------------------------

def fit_covariances(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions,
                    groups: list[Group]) -> dict[str, torch.Tensor]:
    """One pass over ``train`` for the modules of ``groups``: ``{group key}.A`` ``[d', d']`` (once
    per shared-input group) and ``{name}.S`` ``[d_out, d_out]``, float32 on the device."""
    modules = [tm for g in groups for tm in g.modules]
    leader = {g.modules[0].name: g for g in groups}
    acc = {}
    for g in groups:
        acc[f"{g.key}.A"] = torch.zeros(g.d_in, g.d_in, device=ctx.device)
        for tm in g.modules:
            acc[f"{tm.name}.S"] = torch.zeros(tm.d_out, tm.d_out, device=ctx.device)
    # examples, and tokens seen by each group (padding excluded), counted on the host from the
    # batch's mask: no device work per module
    counts = {"examples": 0.0, **{g.key: 0.0 for g in groups}}
    current: dict = {}

    def on_batch(batch: Batch) -> None:
        mask = batch.positions().cpu()
        counts["examples"] += mask.shape[0]
        current.update(batch=batch, padded=not bool(mask.all()), masks={},
                       prefix=mask.sum(dim=0).cumsum(dim=0).tolist())  # tokens in the first n+1 positions

    def on_forward(tm: TrackedModule, a: torch.Tensor) -> None:
        # a: [B, T, d_in] in the model's dtype; A = Σ ã ãᵀ over real tokens
        g = leader.get(tm.name)
        if g is None:
            return
        n, prefix = a.shape[1], current["prefix"]
        tokens = prefix[n - 1] if n <= len(prefix) else a.shape[0] * n
        flat = a.flatten(0, 1)
        masked = flat  # without padding (packed text windows) no mask is applied
        if current["padded"]:
            mask = current["masks"].get(n)
            if mask is None:
                mask = current["masks"][n] = token_mask(current["batch"], n).to(a.dtype)
            masked = (a * mask[..., None]).flatten(0, 1)  # 0/1 mask: masked.T @ flat = masked.T @ masked
        cov = acc[f"{g.key}.A"]
        d = tm.d_in
        add_mm_f32_(cov[:d, :d] if tm.has_bias else cov, masked.T, flat)
        if tm.has_bias:
            col = masked.sum(dim=0, dtype=torch.float32)
            cov[:d, d] += col
            cov[d, :d] += col
            cov[d, d] += tokens
        counts[g.key] += tokens

    def on_backward(tm: TrackedModule, _a: torch.Tensor, delta: torch.Tensor) -> None:
        d = delta.flatten(0, 1)  # [B·T, d_out]; padding has δ = 0
        add_mm_f32_(acc[f"{tm.name}.S"], d.T, d)

    run_pass(ctx, train, f"covariance factors ({train.name})", on_backward=on_backward,
             on_forward=on_forward, on_batch=on_batch, modules=modules,
             sample_seed=opts.sample_seed(ctx.seed), dtype=None)
    for t in acc.values():
        all_reduce_(t)
    total = all_reduce_(torch.tensor(list(counts.values()), dtype=torch.float64, device=ctx.device))
    n = dict(zip(counts, total.clamp(min=1.0).tolist(), strict=True))
    for g in groups:
        acc[f"{g.key}.A"] /= n[g.key]
        for tm in g.modules:
            acc[f"{tm.name}.S"] /= n["examples"]
    return acc


def _eigh(mats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(Λ, Q)`` of each symmetric matrix in float64, one batched ``eigh`` per size."""
    out: list = [None] * len(mats)
    by_size: dict[int, list[int]] = {}
    for i, m in enumerate(mats):
        by_size.setdefault(m.shape[0], []).append(i)
    for idx in by_size.values():
        evals, evecs = torch.linalg.eigh(torch.stack([mats[i].double() for i in idx]))
        for j, i in enumerate(idx):
            out[i] = (evals[j], evecs[j])
    return out


def decompose_groups(groups: list[Group], cov: dict[str, torch.Tensor], dtype: torch.dtype
                     ) -> list[dict[str, torch.Tensor]]:
    """Each group's eigen file: ``QA, LA`` and ``{m}.QS, {m}.LS`` (float32, Λ clipped at 0), with
    one batched float64 ``eigh`` per matrix size over all of ``groups``."""
    mats, slots = [], []  # slots: (group index, key prefix, "A" or "S")
    for i, g in enumerate(groups):
        check_finite_factor(cov[f"{g.key}.A"], "input covariance A", g, dtype)
        mats.append(cov[f"{g.key}.A"])
        slots.append((i, "", "A"))
        for tm in g.modules:
            check_finite_factor(cov[f"{tm.name}.S"], "output-gradient covariance S", tm, dtype)
            mats.append(cov[f"{tm.name}.S"])
            slots.append((i, f"{tm.name}.", "S"))
    out: list[dict[str, torch.Tensor]] = [{} for _ in groups]
    for (i, prefix, f), (evals, evecs) in zip(slots, _eigh(mats), strict=True):
        out[i][f"{prefix}Q{f}"] = evecs.float().contiguous()
        out[i][f"{prefix}L{f}"] = evals.clamp(min=0).float()
    return out


def decompose_group(g: Group, cov: dict[str, torch.Tensor], dtype: torch.dtype
                    ) -> dict[str, torch.Tensor]:
    """One group's eigen file (:func:`decompose_groups` of one group)."""
    return decompose_groups([g], cov, dtype)[0]


def _chunks(groups: list[Group], cap: int) -> list[list[Group]]:
    """Consecutive groups whose covariances sum to at most ``cap`` bytes (at least one each)."""
    out: list[list[Group]] = []
    load = cap + 1
    for g in groups:
        if load + covariance_bytes(g) > cap:
            out.append([])
            load = 0
        out[-1].append(g)
        load += covariance_bytes(g)
    return out


EIGH_CHUNK_BYTES = 512 * 1024**2  # float32 covariances decomposed in one batch (single process)


def fit_eigen(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions, store: FactorStore,
              groups: list[Group]) -> None:
    """Stage ``eigen``: covariance pass(es) and eigendecompositions of every unfinished group."""
    start = time.perf_counter()
    done = store.done("eigen", groups)
    todo = [g for g, d in zip(groups, done, strict=True) if not d]
    plan = make_plan(ctx, opts, "covariance factors", todo, covariance_bytes)
    rank = world()[0]
    for p in range(plan.P):
        part = plan.partitions[p]
        cov = fit_covariances(ctx, train, opts, part)
        if world()[1] == 1:  # batched eigh over equal-size covariances of several groups
            for chunk in _chunks(part, EIGH_CHUNK_BYTES):
                for g, found in zip(chunk, decompose_groups(chunk, cov, ctx.dtype), strict=True):
                    store.put("eigen", g, found, device=ctx.device)
                _drop(cov, chunk)
            continue
        for j, g in enumerate(part):  # module-parallel: rank r decomposes groups r, r+W, ...
            src = owner(j)
            mine = decompose_group(g, cov, ctx.dtype) if src == rank else None
            store.put("eigen", g, mine, src=src, device=ctx.device)
            _drop(cov, [g])
    _record(ctx, store, "eigen", groups, len(todo), plan, start)


def _drop(cov: dict[str, torch.Tensor], groups: list[Group]) -> None:
    for g in groups:
        cov.pop(f"{g.key}.A")
        for tm in g.modules:
            cov.pop(f"{tm.name}.S")


# --- stage 2: EK-FAC's corrected eigenvalues -------------------------------------------------

def rotated_sq_grads(rd: torch.Tensor, ra: torch.Tensor) -> torch.Tensor:
    """``Σ_b (Σ_t rd_bt ra_btᵀ)²`` ``[d_out, d_in']``: one batched matmul squared in place (2.5×
    faster on CPU than an einsum followed by an out-of-place square, measured for 1536 × 576)."""
    g = torch.bmm(rd.transpose(1, 2), ra)  # [B, d_out, d_in']
    return g.square_().sum(dim=0)


def rotate_input(tm: TrackedModule, a: torch.Tensor, qa: torch.Tensor) -> torch.Tensor:
    """``ã Q_A`` ``[B, T, d']`` float32 without materialising ``ã``: ``a Q_A[:d] (+ Q_A[d])``."""
    out = mm_f32(a.flatten(0, 1), qa[: tm.d_in]).view(*a.shape[:2], -1)
    if tm.has_bias:
        out += qa[tm.d_in]
    return out


def _same_tensor(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Views of one storage with the same layout (the hooks' ``a`` are separate ``detach()`` views)."""
    return x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()


def fit_corrected_eigenvalues(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions,
                              groups: list[Group], eigen: dict[str, dict[str, torch.Tensor]]
                              ) -> dict[str, torch.Tensor]:
    """EK-FAC's second pass for ``groups``: ``{name}.Lambda = E_i[(Q_Sᵀ g_i Q_A)²]`` ``[d_out, d']``.

    ``eigen`` maps group key to its eigen tensors (on the device)."""
    of = {tm.name: g for g in groups for tm in g.modules}
    modules = [tm for g in groups for tm in g.modules]
    half = ctx.dtype if ctx.device.type == "cuda" else torch.float32
    qa = {g.key: eigen[g.key]["QA"].to(half) for g in groups}
    qs = {tm.name: eigen[g.key][f"{tm.name}.QS"].to(half) for g in groups for tm in g.modules}
    lam = {tm.name: torch.zeros(tm.d_out, of[tm.name].d_in, device=ctx.device) for tm in modules}
    count = torch.zeros(1, device=ctx.device, dtype=torch.float64)
    rotated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (a, ã Q_A) of this batch

    def on_batch(batch: Batch) -> None:
        count[0] += batch.input_ids.shape[0]
        rotated.clear()

    def accumulate(tm: TrackedModule, a: torch.Tensor, delta: torch.Tensor) -> None:
        # rotated per-example gradient Q_Sᵀ g_b Q_A: [B, d_out, d']; padding has δ = 0
        key = of[tm.name].key
        hit = rotated.get(key)
        if hit is not None and _same_tensor(hit[0], a):  # q/k/v (gate/up): one rotation of their input
            ra = hit[1]
        else:
            ra = rotate_input(tm, a, qa[key])
            rotated[key] = (a, ra)
        rd = mm_f32(delta.flatten(0, 1), qs[tm.name]).view(*delta.shape[:2], -1)
        lam[tm.name] += rotated_sq_grads(rd, ra)

    run_pass(ctx, train, f"eigenvalue correction ({train.name})", on_backward=accumulate,
             on_batch=on_batch, modules=modules, sample_seed=opts.sample_seed(ctx.seed), dtype=None)
    rotated.clear()
    all_reduce_(count)
    n = max(float(count[0]), 1.0)
    return {f"{name}.Lambda": all_reduce_(v) / n for name, v in lam.items()}


def fit_lambda(ctx: RunContext, train: TokenizedSplit, opts: CurvatureOptions, store: FactorStore,
               groups: list[Group]) -> None:
    """Stage ``lambda``: the eigenvalue-correction pass(es) of every unfinished group."""
    start = time.perf_counter()
    done = store.done("lambda", groups)
    todo = [g for g, d in zip(groups, done, strict=True) if not d]
    plan = make_plan(ctx, opts, "eigenvalue correction", todo, correction_bytes,
                     correction_reserve(todo, ctx.batch_size))
    for p in range(plan.P):
        part = plan.partitions[p]
        eigen = {g.key: store.get("eigen", g, ctx.device) for g in part}
        lam = fit_corrected_eigenvalues(ctx, train, opts, part, eigen)
        for g in part:
            mine = {f"{tm.name}.Lambda": lam.pop(f"{tm.name}.Lambda") for tm in g.modules}
            for tm in g.modules:
                check_finite_factor(mine[f"{tm.name}.Lambda"], "corrected eigenvalues Λ*", tm,
                                    ctx.dtype)
            store.put("lambda", g, mine, src=0, device=ctx.device)
        del eigen
    _record(ctx, store, "lambda", groups, len(todo), plan, start)


def _record(ctx: RunContext, store: FactorStore, stage: str, groups: list[Group], fitted: int,
            plan: Plan, start: float) -> None:
    """Manifest entry of one stage: groups fitted or resumed, and the partition plan."""
    shared = sum(len(g.modules) - 1 for g in groups)
    ctx.run_dir.record_step(
        f"{store.root}/{stage}", store.fingerprint, reused=fitted == 0,
        seconds=None if fitted == 0 else time.perf_counter() - start,
        groups=len(groups), fitted=fitted, resumed=len(groups) - fitted,
        shared_inputs_saved=shared, **({"plan": plan.to_json()} if fitted else {}))


class FactorView(Mapping):
    """Read access ``view[f"{module}.{key}"]`` to one stage's factors across groups (loads the
    module's group from the store on demand; for tests and inspection)."""

    def __init__(self, store: FactorStore, stage: str, groups: list[Group], device: torch.device):
        self.store, self.stage, self.device = store, stage, device
        self.of = {tm.name: g for g in groups for tm in g.modules}

    def _split(self, key: str) -> tuple[str, str]:
        name, _, field = key.rpartition(".")
        return name, field

    def __getitem__(self, key: str) -> torch.Tensor:
        name, field = self._split(key)
        g = self.of[name]
        found = self.store.get(self.stage, g, self.device)
        return found[field] if field in ("QA", "LA") else found[key]

    def __iter__(self) -> Iterator[str]:
        for name, g in self.of.items():
            for k in layout(self.stage, g):
                yield k if "." in k else f"{name}.{k}"

    def __len__(self) -> int:
        return sum(1 for _ in self)


def precondition_eigenbasis(q: torch.Tensor, qa: torch.Tensor, qs: torch.Tensor,
                            eigenvalues: torch.Tensor, damping: float) -> torch.Tensor:
    """``V = Q_S [(Q_Sᵀ q Q_A) / (Λ + λ)] Q_Aᵀ``: ``(G + λI)^{-1} q`` with ``G`` diagonal in the
    Kronecker eigenbasis (``Λ = Λ_S Λ_Aᵀ`` for K-FAC, ``Λ*`` for EK-FAC). In float32: the rotations
    are orthogonal and the division elementwise, so float64 changes V by < 1e-6 relative (measured)
    and would cost twice the time (12 s of SmolLM2's EK-FAC run on one CPU thread)."""
    # q: [d_out, d_in']; qs: [d_out, d_out]; qa: [d_in', d_in']; eigenvalues: [d_out, d_in']
    rotated = qs.T @ q.float() @ qa
    return qs @ (rotated / (eigenvalues.float() + damping)) @ qa.T


def example_sq_norms(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``‖g_b‖² = ‖Σ_t δ_t ã_tᵀ‖_F²`` per example without forming ``g`` when tokens are few:
    ``Σ_{t,s} (δ_t·δ_s)(ã_t·ã_s)``; for long sequences the ``[B, d_out, d_in']`` gradient is cheaper."""
    # a: [B, T, d_in']; delta: [B, T, d_out] -> [B]
    t, d_in, d_out = a.shape[1], a.shape[2], delta.shape[2]
    if t * t <= d_in * d_out:
        gram = torch.einsum("bto,bso->bts", delta, delta) * torch.einsum("bti,bsi->bts", a, a)
        return gram.sum(dim=(1, 2))
    return torch.bmm(delta.transpose(1, 2), a).square_().sum(dim=(1, 2))
