"""The ``lora_ranks`` application: a rank allocation in, a peft ``LoraConfig`` (and, when asked, the
adapter fine-tuned with it) out.

The adapter is the one ``finetune:`` describes (rank r, alpha, dropout, target modules; peft's
default targets for the architecture when none are named); the budget is its parameter count. The
allocation is recomputed here with the model's own module sizes (``d_in + d_out`` per target
module), so the budget is exact for any architecture.

Artifacts under the run directory:

- ``lora_config/adapter_config.json``: the ``LoraConfig`` with ``rank_pattern`` and
  ``alpha_pattern`` keyed by full module names (``model.layers.3.self_attn.q_proj``; peft matches a
  key against the end of a module's name, after a dot, so the keys also match under a
  ``PeftModel``), loadable with ``LoraConfig.from_pretrained("<run>/lora_config")``;
- ``allocation.json`` (the ranks, budget, costs and the scores they came from),
  ``lora_ranks.json`` (adapter parameters against the uniform adapter's) and
  ``plots/lora_ranks.png`` (scores and rank per layer, side by side);
- with training: ``adapter/`` (peft format) and, with ``compare_uniform``, ``adapter_uniform/``
  and ``lora_ranks/uniform_metrics.json``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from layerif_core.config import RunConfig
from layerif_core.context import RunContext
from layerif_core.early_stopping import EarlyStopping
from layerif_core.errors import ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_core.results import Allocation, LayerScores
from layerif_core.scope import base_model
from layerif_lora_ranks.allocator import LoraRankAllocator, RankBudget
from layerif_lora_ranks.options import LoraRanksOptions, RankOptions
from layerif_lora_ranks.plots import plot_ranks

log = logging.getLogger("layerif")


@dataclass(frozen=True)
class Target:
    """One module that gets a LoRA adapter: full name, type (the target name it matched), layer."""

    name: str
    type: str
    layer: int
    d_in: int
    d_out: int


def target_names(config: RunConfig, model: torch.nn.Module) -> list[str]:
    """``finetune.target_modules``, or peft's default targets for the model's architecture."""
    if config.finetune.target_modules:
        return list(config.finetune.target_modules)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULTS:
        raise ConfigError(f"peft has no default LoRA targets for model type '{model_type}'; set "
                          "finetune.target_modules (e.g. [q_proj, v_proj]).")
    return list(DEFAULTS[model_type])


def find_targets(model: torch.nn.Module, names: list[str]) -> list[Target]:
    """The decoder-block modules peft adapts for ``names`` (a name matches a module whose full name
    is it or ends with ``.name``), each with the first name it matched as its type."""
    layer_map = LayerMap(model)
    blocks = layer_map.modules()
    found = {n: False for n in names}
    out = []
    for tm in blocks:
        kind = next((n for n in names if tm.name == n or tm.name.endswith(f".{n}")), None)
        if kind is not None:
            found[kind] = True
            out.append(Target(tm.name, kind, tm.layer, tm.d_in, tm.d_out))
    outside = {n for n in names if not found[n] and any(
        full == n or full.endswith(f".{n}") for full, _ in model.named_modules())}
    missing = [n for n in names if not found[n] and n not in outside]
    if missing:
        shorts = sorted({tm.short.split(".")[-1] for tm in blocks})
        raise ConfigError(f"target modules {missing} are not in {type(model).__name__}; its layers' "
                          f"linear modules are {shorts}: fix finetune.target_modules.")
    if not out:
        raise ConfigError(f"target modules {names} match no module of the decoder layers; name "
                          "linear modules of the layers in finetune.target_modules.")
    if outside:
        log.warning("target modules %s lie outside the decoder layers: they keep the uniform rank",
                    sorted(outside))
    return out


def rank_budget(targets: list[Target], n_layers: int, opts: RankOptions, config: RunConfig
                ) -> RankBudget:
    """Per module type, ``d_in + d_out`` summed per layer, and the type's uniform rank."""
    types = list(dict.fromkeys(t.type for t in targets))
    costs = {k: [0] * n_layers for k in types}
    for t in targets:
        costs[t.type][t.layer] += t.d_in + t.d_out
    if isinstance(opts.rank, dict):
        unknown = sorted(set(opts.rank) - set(types))
        missing = [k for k in types if k not in opts.rank]
        if unknown or missing:
            raise ConfigError(f"allocation option rank names module types {sorted(opts.rank)} but the "
                              f"target modules are {types}; give one rank per target module.")
        ranks = {k: opts.rank[k] for k in types}
    else:
        ranks = {k: opts.rank or config.finetune.rank for k in types}
    return RankBudget(costs, ranks)


def lora_config(targets: list[Target], allocation: Allocation, config: RunConfig, names: list[str],
                alpha: str) -> Any:
    """The ``peft.LoraConfig`` of the allocation: ``rank_pattern``/``alpha_pattern`` per module."""
    from peft import LoraConfig

    spec = config.finetune
    ranks, uniform = allocation.details["ranks"], allocation.details["uniform_rank"]
    rank_pattern = {t.name: ranks[t.type][t.layer] for t in targets}
    alpha_pattern = ({t.name: spec.alpha * ranks[t.type][t.layer] / uniform[t.type] for t in targets}
                     if alpha == "scale" else {})
    base = next(iter(uniform.values()))
    return LoraConfig(r=base, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=names,
                      rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, task_type="CAUSAL_LM",
                      base_model_name_or_path=config.model.source)


def uniform_params(targets: list[Target], allocation: Allocation) -> int:
    uniform = allocation.details["uniform_rank"]
    return sum(uniform[t.type] * (t.d_in + t.d_out) for t in targets)


def scores_of(allocation: Allocation) -> tuple[LayerScores, RankOptions]:
    """The scores and options a ``lora_ranks`` allocation was made from (kept in its details)."""
    if allocation.kind != "lora_ranks":
        raise ConfigError(f"lora_ranks needs a rank allocation, got '{allocation.kind}' from "
                          f"'{allocation.allocator}'; use allocation name lora_ranks.")
    return (LayerScores.from_json(allocation.details["scores"]),
            RankOptions(**allocation.details["options"]))


class LoraRanks:
    """Per-layer LoRA ranks from an allocation: a peft LoraConfig, optionally fine-tuned."""

    conformance_allocator = ("lora_ranks", {"rank": 4})

    def __init__(self, opts: LoraRanksOptions | None):
        self.opts = opts or LoraRanksOptions()
        self.allocation: Allocation | None = None
        self.config: Any = None
        self.metrics: dict[str, float] = {}  # measured by the application itself
        self.metrics_uniform: dict[str, float] = {}
        self.curves: dict[str, list[list[float]]] = {}  # early stopping's held-out loss

    def estimate(self, work):
        """What fine-tuning will cost, if it does (``layerif study --plan``)."""
        from layerif_lora_ranks.cost import estimate

        return estimate(self.train_enabled(work.config), work)

    def plan(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation
             ) -> tuple[Allocation, Any]:
        """The exact allocation for ``model``'s target modules and its LoraConfig, written to disk."""
        scores, rank_opts = scores_of(allocation)
        n_layers = len(ctx.layer_map)
        if scores.values.numel() != n_layers:
            raise DataError(f"the scores have {scores.values.numel()} layers but the model has "
                            f"{n_layers}; use scores computed for this model.")
        names = target_names(ctx.config, model)
        targets = find_targets(model, names)
        budget = rank_budget(targets, n_layers, rank_opts, ctx.config)
        exact = LoraRankAllocator(rank_opts).allocate(scores, budget=budget)
        cfg = lora_config(targets, exact, ctx.config, names, self.opts.alpha)
        run = ctx.run_dir
        run.write_json("allocation.json", {ctx.applied_task.name: exact.to_json()})
        cfg.save_pretrained(str(run.file("lora_config")))
        params = exact.details["params"]
        run.write_json("lora_ranks.json", {
            "lora_params": params, "uniform_params": uniform_params(targets, exact),
            "ranks": exact.details["ranks"], "uniform_rank": exact.details["uniform_rank"],
            "target_modules": names, "modules": len(targets), "alpha": self.opts.alpha,
            "config": str(run.file("lora_config"))})
        plot_ranks(scores, exact, run.file("plots/lora_ranks.png"),
                   f"{ctx.config.model.source}: LoRA ranks ({params} parameters)")
        self.allocation, self.config = exact, cfg
        return exact, cfg

    def train_enabled(self, config: RunConfig) -> bool:
        return self.opts.train if self.opts.train is not None else "finetune" in config.model_fields_set

    def apply(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation) -> torch.nn.Module:
        """The LoraConfig of ``allocation`` on the base model (a scoring adapter is removed first:
        :mod:`layerif_core.scope`), fine-tuned when asked."""
        model = base_model(model)
        _, cfg = self.plan(ctx, model, allocation)
        if not self.train_enabled(ctx.config):
            return model
        base = copy.deepcopy(model) if self.opts.compare_uniform else None
        stop = self.opts.early_stopping
        tuned, result = train_adapter(ctx, model, "adapter", cfg, stop)
        self.metrics = {"lora_ranks/validation_loss": validation_loss(ctx, tuned), **stop_metrics(result)}
        if result.holdout_curve:
            self.curves = {"lora_ranks/holdout_loss": [list(p) for p in result.holdout_curve]}
        ctx.run_dir.write_json("lora_ranks/metrics.json", self.metrics)
        if base is not None:
            uniform, uniform_result = train_adapter(ctx, base, "adapter_uniform", None, stop)
            measured = {"lora_ranks/validation_loss": validation_loss(ctx, uniform),
                        **stop_metrics(uniform_result), **evaluate(ctx, uniform)}
            self.metrics_uniform = {f"uniform/{k}": v for k, v in measured.items()}
            ctx.run_dir.write_json("lora_ranks/uniform_metrics.json", self.metrics_uniform)
        return tuned


def stop_metrics(result: Any) -> dict[str, float]:
    """With early stopping, the optimizer steps trained and the step whose adapter was kept."""
    if result.best_step is None:
        return {}
    return {"train/steps": float(result.steps), "train/best_step": float(result.best_step)}


def train_adapter(ctx: RunContext, model: torch.nn.Module, name: str, lora: Any,
                  early_stopping: EarlyStopping | None = None) -> tuple[torch.nn.Module, Any]:
    """Fine-tune ``model`` with ``lora`` (None: the uniform adapter of ``finetune:``) into
    ``<run>/<name>``, on ``finetune.data`` or the training split of the task whose allocation is
    applied, early-stopped when asked; a finished adapter with the same inputs is loaded instead of
    retrained. The tuned model and the :class:`~layerif_core.finetune.FinetuneResult`."""
    from peft import PeftModel

    from layerif_core.finetune import finetune

    spec = ctx.config.finetune.model_copy(update={"output": str(ctx.run_dir.file(name))})
    config = ctx.config.model_copy(update={"finetune": spec})
    result = finetune(config, model=model, tokenizer=ctx.tokenizer, show_progress=ctx.show_progress,
                      lora=lora, task=ctx.applied_task, early_stopping=early_stopping)
    tuned = result.model or PeftModel.from_pretrained(model, str(result.adapter_dir))
    tuned.eval()
    return tuned, result


def validation_loss(ctx: RunContext, model: torch.nn.Module) -> float:
    """Mean next-token cross-entropy over the loss tokens (the answers, with ``loss_on:
    completion``) of the validation split of the task whose allocation is applied: the fine-tuning
    objective on held-out data."""
    from layerif_core.data import tokenize_split
    from layerif_core.finetune import split_loss
    from layerif_core.models import max_context

    task = ctx.applied_task
    split = tokenize_split(task.validation, ctx.tokenizer, ctx.seed, f"{task.name}/validation",
                           max_context(model))
    loss, count = split_loss(model, split, ctx.batch_size, ctx.pad_id)
    if count == 0:
        raise DataError(f"the validation split of task '{task.name}' has no loss tokens; check its "
                        "completion template.")
    return loss


def evaluate(ctx: RunContext, model: torch.nn.Module) -> dict[str, float]:
    """The configured evaluators' metrics of ``model`` (not written: the caller decides where)."""
    from layerif_core.registry import get_registry

    registry = get_registry()
    metrics: dict[str, float] = {}
    for spec in ctx.config.evaluation:
        metrics.update(registry.build("evaluator", spec.name, spec.options).evaluate(ctx, model,
                                                                                     ctx.tokenizer))
    return metrics
