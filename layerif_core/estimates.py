"""Cost estimates of the core components (estimators, scorers) from shapes and config alone, for
``layerif study --plan``: what a stage will cost before anything is downloaded or run.

A component of a plugin states its own: an ``estimate(work: Workload) -> Cost`` method on the
component (applications, evaluators, and third-party scorers or estimators alike); the core's
are the functions below, by registered name. The formulas are those of :mod:`layerif_core.cost`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerif_core.config import DataSpec, RunConfig, TaskSpec
from layerif_core.cost import (
    DTYPE_BYTES,
    Cost,
    activation_bytes,
    ekfac_flops,
    pass_flops,
    weights_bytes,
)
from layerif_core.layers import LayerMap, TrackedModule

CHARS_PER_TOKEN = 4.0  # English text under a BPE vocabulary of 32k-150k tokens
UNKNOWN_LENGTH = 512  # tokens per example assumed where neither max_length nor the data say
# hub text corpora whose size a plan reads from the bundled copy of the same text (the bundled
# WikiText-2 is the word-level release: within 3% of the raw one's characters)
HUB_TEXTS = {("Salesforce/wikitext", "wikitext-2-raw-v1"): "wikitext2",
             ("Salesforce/wikitext", "wikitext-2-v1"): "wikitext2"}


@dataclass
class Workload:
    """What an estimate reads: the run config, the model on the meta device and its dtype."""

    config: RunConfig
    model: nn.Module
    dtype: torch.dtype

    @property
    def layer_map(self) -> LayerMap:
        """The tracked modules; through a LoRA adapter (``lora_only``) the base modules it sits on,
        whose passes cost the same (the LoRA tensors' own products are small against them)."""
        spec = self.config.layers
        return LayerMap(self.model, spec.model_copy(update={"lora_only": False}) if spec.lora_only else spec)

    @property
    def task(self) -> TaskSpec:
        """The task the application acts for (``apply_to``; the first with ``each`` or one task)."""
        name = self.config.application_tasks()[0]
        return next(t for t in self.config.tasks if t.name == name)

    def weights(self) -> float:
        return float(weights_bytes(self.model, self.dtype))

    def activations(self, batch: int, seq: int, backward: bool) -> float:
        return float(activation_bytes(self.model, batch, seq, self.dtype, backward))


def split_size(spec: DataSpec, seed: int = 0) -> tuple[int, int, str]:
    """``(examples, tokens per example, note)`` of a data split, read offline: packed windows
    exactly; bundled tasks from a sample of their records; the paper's tasks from their known sizes;
    a local file by its lines; a hub dataset only through ``limit`` (else a note says the size is
    unknown)."""
    from layerif_core.data import is_generated_task
    from layerif_core.tasks import TEXTS, bundled_records, corpus_text

    name = HUB_TEXTS.get((spec.source, spec.config_name), spec.source.removeprefix("bundled:"))
    length = spec.max_length or UNKNOWN_LENGTH
    if spec.pack:
        if spec.windows is not None:
            return spec.windows, length, ""
        if name in TEXTS:
            chars = len(corpus_text(name, spec.split))
            return max(1, int(chars / CHARS_PER_TOKEN / length)), length, ""
    if is_generated_task(spec.source):
        records = bundled_records(name, spec.split, seed)
        chars = sum(len(str(r.get("question", ""))) + len(str(r.get("answer", ""))) + 2
                    for r in records[:64]) / min(64, len(records))
        n = min(spec.limit or len(records), len(records) - spec.skip)
        return n, min(length, int(chars / CHARS_PER_TOKEN) + 8), ""
    if spec.source.startswith("paper:"):
        from layerif_core.tasks.paper import split_examples

        n = split_examples(spec.source.split(":", 1)[1], spec.split)
        n = min(spec.limit or n, max(n - spec.skip, 0))
        return n, length, "" if spec.max_length else f"{spec.source}: {length} tokens per example assumed"
    path = Path(spec.source).expanduser()
    if path.is_file():
        lines = sum(1 for _ in path.open(encoding="utf-8", errors="ignore"))
        n = min(spec.limit or lines, max(lines - spec.skip, 0))
        return n, length, "" if spec.max_length else f"{spec.source}: {length} tokens per example assumed"
    if spec.limit is not None:
        return spec.limit, length, "" if spec.max_length else f"{spec.source}: {length} tokens assumed"
    return 1000, length, f"{spec.source}: size unknown offline, 1000 examples assumed (set limit)"


def _groups(modules: list[TrackedModule]) -> list[Any]:
    """Shared-input groups by name (q/k/v and gate/up of one block read the same tensor)."""
    from layerif_core.estimators.memory import Group

    shared = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "gate_proj": "mlp", "up_proj": "mlp"}
    groups: dict[tuple, list[TrackedModule]] = {}
    for tm in modules:
        short = tm.name.rsplit(".", 1)[-1]
        key = (tm.layer, shared.get(short, tm.name))
        groups.setdefault(key, []).append(tm)
    return [Group(ms) for ms in groups.values()]


def influence_cost(work: Workload, estimator: str, options: Any) -> Cost:
    """An influence estimator over the first task's train and validation splits."""
    cfg, model = work.config, work.model
    task = cfg.tasks[0]
    n_train, t_train, note1 = split_size(task.train, cfg.seed)
    n_query, t_query, note2 = split_size(task.validation, cfg.seed)
    seq = max(t_train, t_query)
    modules = work.layer_map.modules()
    groups = _groups(modules)
    tracked = sum(tm.d_out * tm.d_in for tm in modules)
    batch = cfg.batch_size
    peak = work.weights() + work.activations(batch, seq, backward=True) + tracked * 4
    cost = Cost(note="; ".join(n for n in (note1, note2) if n))
    if estimator in ("ekfac", "kfac", "grad_dot", "grad_cosine"):
        kind = "grad_dot" if estimator == "grad_cosine" else estimator
        cost.flops = {k: v for k, v in ekfac_flops(model, groups, n_train, n_query, seq, kind).items()
                      if k != "total"}
        if kind != "grad_dot":
            dims = [g.d_in for g in groups] + [tm.d_out for tm in modules]
            cost.eigh = sum(9.0 * d**3 for d in dims)
            factors = sum(g.d_in**2 for g in groups) + sum(tm.d_out**2 for tm in modules)
            peak += 2 * factors * 4 + (tracked * 4 if kind == "ekfac" else 0)
    elif estimator == "datainf":
        grams = 2.0 * t_train**2 * sum(tm.d_in + tm.d_out for tm in modules) * n_train
        cost.flops = {"passes": 3 * pass_flops(model, n_train, t_train) + pass_flops(model, n_query, t_query),
                      "weight_gradients": 2.0 * tracked * (2 * n_train * t_train + n_query * t_query)}
        cost.flops_fp32 = grams
    elif estimator == "lissa":
        steps = options.depth * options.repeats * len(work.layer_map)
        lb = options.batch_size or batch
        cost.flops = {"recursion": steps * 2 * pass_flops(model, lb, seq),
                      "score": pass_flops(model, n_train, t_train) + pass_flops(model, n_query, t_query)}
    elif estimator == "exact":
        per_layer = work.layer_map.num_params()
        cost.flops = {"curvature": sum(2.0 * p * p * n_train * t_train for p in per_layer)}
        cost.flops_fp32 = sum(p**3 / 3 for p in per_layer)
        peak += max(per_layer) ** 2 * 8
    else:
        cost.note = f"no cost model for estimator '{estimator}'"
    cost.peak_bytes = peak
    return cost


def forward_cost(work: Workload, n: int, seq: int, note: str = "", backward: bool = False) -> Cost:
    """Passes over ``n × seq`` tokens: forward only, or forward and backward."""
    flops = pass_flops(work.model, n, seq) * (1.0 if backward else 0.5)
    return Cost({"passes": flops}, peak_bytes=work.weights() + work.activations(
        work.config.batch_size, seq, backward), note=note)


def calibration_cost(work: Workload, options: Any, split: str, backward: bool = False) -> Cost:
    spec = options.data or getattr(work.config.tasks[0], split)
    n, seq, note = split_size(spec, work.config.seed)
    return forward_cost(work, min(n, options.limit or n), seq, note, backward)


def htsr_cost(work: Workload, options: Any) -> Cost:
    """Eigenvalues of ``WᵀW`` for every tracked weight, in float32: ``2 m n k`` for the product and
    ``9 k³`` for the eigendecomposition (``k = min(m, n)``)."""
    modules = work.layer_map.modules()
    gram = sum(2.0 * tm.d_out * tm.d_in * min(tm.d_out, tm.d_in) for tm in modules)
    eig = sum(9.0 * min(tm.d_out, tm.d_in) ** 3 for tm in modules)
    largest = max(tm.d_out * tm.d_in for tm in modules)
    return Cost(flops_fp32=gram, eigh=eig, peak_bytes=work.weights() + 3 * largest * 4)


def lsa_cost(work: Workload, options: Any) -> Cost:
    """LSA: the calibration forward (once per group of blocks whose input Gram matrices fit its
    budget), the Grams ``2 T d_in²`` and the greedy choice ``2 d_out d_in (fraction · block + d_in)``
    per module, in float64 (counted as twice the float32 work)."""
    from layerif_core.scorers.lsa import GRAM_BYTES

    base = calibration_cost(work, options, "train")
    spec = options.data or work.config.tasks[0].train
    n, seq, _ = split_size(spec, work.config.seed)
    tokens = min(n, options.limit or n) * seq
    modules = work.layer_map.modules()
    grams = sum(8 * tm.d_in**2 for tm in modules)
    passes = max(1, -(-grams // GRAM_BYTES))
    width = options.block_size or max(tm.d_in for tm in modules)
    work64 = sum(2.0 * tm.d_in**2 * tokens + 2.0 * tm.d_out * tm.d_in * (options.fraction * width + tm.d_in)
                 for tm in modules)
    return Cost({k: v * passes for k, v in base.flops.items()}, flops_fp32=2 * work64,
                peak_bytes=base.peak_bytes + min(grams, GRAM_BYTES), note=base.note)


def _zero(work: Workload, options: Any) -> Cost:
    return Cost(peak_bytes=work.weights())


SCORERS: dict[str, Callable[[Workload, Any], Cost]] = {
    "uniform": _zero, "depth": _zero, "random": _zero,
    "htsr_alpha": htsr_cost,
    "owl_outlier": lambda w, o: calibration_cost(w, o, "train"),
    "dlp": lambda w, o: calibration_cost(w, o, "train"),
    "lsa": lsa_cost,
    "alp": lambda w, o: calibration_cost(w, o, "train", backward=True),
    "block_influence": lambda w, o: calibration_cost(w, o, "train"),
    "gradient_norm": lambda w, o: calibration_cost(w, o, "validation", backward=True),
}


def scorer_cost(work: Workload) -> Cost:
    """The configured scorer's cost: its own ``estimate`` if it has one, else the core's."""
    from layerif_core.registry import get_registry

    spec = work.config.scorer
    reg = get_registry()
    if spec.name == "layerif":
        est = spec.estimator
        component = reg.build("estimator", est.name, est.options)
        own = getattr(component, "estimate", None)
        options = reg.get("estimator", est.name).options(est.options)
        return own(work) if callable(own) else influence_cost(work, est.name, options)
    component = reg.build("scorer", spec.name, spec.options)
    own = getattr(component, "estimate", None)
    if callable(own):
        return own(work)
    options = reg.get("scorer", spec.name).options(spec.options)
    found = SCORERS.get(spec.name)
    return found(work, options) if found else Cost(note=f"no cost model for scorer '{spec.name}'")


def component_cost(work: Workload, kind: str, name: str, options: dict[str, Any]) -> Cost:
    """An application's or evaluator's cost through its ``estimate`` method (none: unknown)."""
    from layerif_core.registry import get_registry

    component = get_registry().build(kind, name, options)
    own = getattr(component, "estimate", None)
    if callable(own):
        return own(work)
    return Cost(note=f"{kind} '{name}' states no cost (no estimate method)")


def finetune_cost(work: Workload) -> Cost:
    """LoRA fine-tuning of the scoring adapter (``finetune``): epochs × the first task's training
    tokens, forward and input-gradient backward of the frozen model (the LoRA tensors are small)."""
    ft = work.config.finetune
    n, seq, note = split_size(work.config.tasks[0].train, work.config.seed)
    flops = ft.epochs * pass_flops(work.model, n, seq)
    peak = work.weights() + work.activations(ft.batch_size, seq, backward=True)
    return Cost({"training": flops}, peak_bytes=peak, note=note)


def dtype_of(config: RunConfig, device_is_gpu: bool) -> torch.dtype:
    """The model's dtype on the planned device (``auto``: bf16 on a GPU, float32 on a CPU)."""
    if config.model.dtype == "auto":
        return torch.bfloat16 if device_is_gpu else torch.float32
    return getattr(torch, config.model.dtype)


__all__ = ["DTYPE_BYTES", "Workload", "component_cost", "dtype_of", "finetune_cost", "forward_cost",
           "scorer_cost", "split_size"]
