"""The ``lora_moe`` application: allocation in, trained LoRA-MoE model out (plus its artifacts).

Artifacts under the run directory: ``lora_moe/adapter/`` (``lora_moe.safetensors`` +
``lora_moe_config.json``; :func:`~layerif_lora_moe.model.load_lora_moe` puts it back on the base
model), ``lora_moe/train_log.json``, ``lora_moe/checkpoint.safetensors`` (resume), and
``plots/lora_moe_loss.png`` / ``plots/lora_moe_usage.png``.
"""

from __future__ import annotations

import torch

from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit, tokenize_split
from layerif_core.errors import ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_core.models import max_context
from layerif_core.results import Allocation
from layerif_core.scope import base_model
from layerif_lora_moe.config import LoraMoeOptions
from layerif_lora_moe.model import ADAPTER as ADAPTER_NAME
from layerif_lora_moe.model import LoraMoeModel, inject_lora_moe
from layerif_lora_moe.plots import plot_loss, plot_usage
from layerif_lora_moe.train import TrainLog, train

ADAPTER_DIR = "lora_moe/adapter"


def experts_of(allocation: Allocation, n_layers: int) -> list[int]:
    """The integer expert counts of an ``experts`` allocation that fits a model of ``n_layers``."""
    if allocation.kind != "experts":
        raise ConfigError(f"lora_moe needs an expert allocation, got '{allocation.kind}' from "
                          f"'{allocation.allocator}'; use allocator alphalora_experts or uniform_experts.")
    values = [int(round(v)) for v in allocation.values]
    if len(values) != n_layers:
        raise DataError(f"the allocation has {len(values)} layers but the model has {n_layers}; "
                        "compute the scores and allocation on this model.")
    return values


def task_splits(ctx: RunContext, opts: LoraMoeOptions) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Tokenised training and validation data: the options' ``train`` and ``validation``, else the
    splits of the task whose allocation is applied (``ctx.applied_task``: ``apply_to``)."""
    task = ctx.applied_task
    train_spec = opts.train or task.train
    val_spec = opts.validation or task.validation
    n_ctx = max_context(ctx.model)
    seed = ctx.seed if opts.seed is None else opts.seed
    train_split = tokenize_split(train_spec, ctx.tokenizer, seed, "lora_moe/train", n_ctx)
    val_split = tokenize_split(val_spec, ctx.tokenizer, seed, "lora_moe/validation", n_ctx)
    return train_split, val_split


def check_experts(handle: LoraMoeModel, experts: list[int]) -> None:
    """Every target module of layer l holds ``experts[l]`` experts (plain LoRA where it is 1), on a
    base linear module (never on a LoRA tensor of a scoring adapter)."""
    built: dict[int, set[int]] = {}
    for layer, name, module in handle.modules:
        if ".lora_" in name:
            raise RuntimeError(f"LoRA-MoE experts were put on the LoRA tensor {name}; they must sit "
                               "on base weights")
        moe = getattr(module, "lora_moe", None)
        built.setdefault(layer, set()).add(moe[ADAPTER_NAME].n_experts if moe is not None
                                           and ADAPTER_NAME in moe else 1)
    for layer, counts in built.items():
        if counts != {experts[layer]}:
            raise RuntimeError(f"layer {layer}: built {sorted(counts)} experts per module for an "
                               f"allocation of {experts[layer]}")


class LoraMoeApplication:
    """Mixture of LoRA experts per decoder layer, ``n_l`` from the allocation, trained on a task."""

    conformance_allocator = ("uniform_experts", {"total": 6})

    def __init__(self, opts: LoraMoeOptions | None):
        self.opts = opts or LoraMoeOptions()
        self.handle: LoraMoeModel | None = None
        self.log: TrainLog | None = None
        self.metrics: dict[str, float] = {}  # what a study records (layerif_core.protocols.Application)
        self.curves: dict[str, list[list[float]]] = {}

    def estimate(self, work):
        """What training will cost (``layerif study --plan``; :mod:`layerif_lora_moe.cost`)."""
        from layerif_lora_moe.cost import estimate

        return estimate(self.opts, work)

    def inject(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation) -> LoraMoeModel:
        """Experts on the base model: a scoring adapter (``model.adapter`` with ``layers.lora_only``)
        is removed first (:mod:`layerif_core.scope`); every base linear module of the blocks is a
        candidate target, whatever the scorer tracked. The expert counts built are checked against
        the allocation."""
        o = self.opts
        experts = experts_of(allocation, len(ctx.layer_map))
        model = base_model(model)
        torch.manual_seed(ctx.seed if o.seed is None else o.seed)
        handle = inject_lora_moe(model, LayerMap(model), experts, o.rank, o.alpha, o.dropout,
                                 o.target_modules, o.top_k)
        check_experts(handle, experts)
        return handle

    def apply(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation,
              stop_after: int | None = None) -> torch.nn.Module:
        handle = self.inject(ctx, model, allocation)
        model = handle.model
        train_split, val_split = task_splits(ctx, self.opts)
        log = train(ctx, handle, self.opts, train_split, val_split, stop_after=stop_after)
        self.handle, self.log = handle, log
        if log.validation:
            self.metrics = {"lora_moe/validation_loss": float(log.validation[-1]["loss"])}
            self.curves = {"lora_moe/validation_loss": [[float(p["step"]), float(p["loss"])]
                                                        for p in log.validation]}
        handle.save(ctx.run_dir.file(ADAPTER_DIR))
        ctx.run_dir.write_json("lora_moe/train_log.json", log.to_json())
        plot_loss(log, ctx.run_dir.file("plots/lora_moe_loss.png"),
                  title=f"LoRA-MoE ({allocation.allocator}, {sum(handle.spec.experts)} experts)")
        plot_usage(log, handle.spec.experts, ctx.run_dir.file("plots/lora_moe_usage.png"))
        n_train = sum(p.numel() for p in handle.trainable().values())
        ctx.run_dir.update_manifest(lora_moe={
            "experts": handle.spec.experts, "top_k": handle.spec.top_k,
            "target_modules": len(handle.spec.targets), "trainable_params": n_train,
            "steps": len(log.steps), "resumed_from": log.resumed_from,
            "train_seconds": round(log.seconds, 2),
            "validation_loss": [v["loss"] for v in log.validation],
        })
        model.eval()
        return model
