"""The ``prune`` application: an allocation of sparsity per layer, applied by a pruner."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerif_core.context import RunContext
from layerif_core.errors import ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_core.models import max_context
from layerif_core.results import Allocation
from layerif_core.scope import application_layers, base_model, has_adapter
from layerif_prune.calibration import calibration_tokens, calibration_windows
from layerif_prune.options import PruneOptions
from layerif_prune.report import achieved, plot_sparsity, save_model, zeros_in_memory, zeros_in_saved
from layerif_prune.resume import BlockCheckpoint, fingerprint
from layerif_prune.sequential import prune_blocks

log = logging.getLogger("layerif")


@dataclass
class PruneResult:
    """The pruned model and what was measured on it."""

    model: torch.nn.Module
    masks: dict[str, torch.Tensor]
    target: list[float]
    achieved: dict[str, Any]
    seconds: float
    model_dir: Path | None


def target_sparsities(allocation: Allocation, layer_map: LayerMap, opts: PruneOptions) -> list[float]:
    """Per-layer sparsity: the allocation's, or ``1 − N/M`` everywhere for an N:M pattern."""
    if allocation.kind != "sparsity":
        raise ConfigError(f"pruning needs a sparsity allocation, got a '{allocation.kind}' one from "
                          f"'{allocation.allocator}'; use e.g. alpha_pruning or uniform_sparsity.")
    if len(allocation.values) != len(layer_map):
        raise DataError(f"the allocation has {len(allocation.values)} layers but the model has "
                        f"{len(layer_map)}; the scores come from another model.")
    bad = [v for v in allocation.values if not 0.0 <= v < 1.0]
    if bad:
        raise ConfigError(f"layer sparsity {bad[0]} is outside [0, 1); fix the allocator options.")
    nm = opts.nm()
    if nm is None:
        return [float(v) for v in allocation.values]
    fixed = 1.0 - nm[0] / nm[1]
    if max(allocation.values) - min(allocation.values) > 1e-9:
        log.warning("pattern %s fixes the sparsity of every layer at %.3g; the per-layer allocation "
                    "of '%s' is ignored", opts.pattern, fixed, allocation.allocator)
    return [fixed] * len(layer_map)


def calibration(ctx: RunContext, model: torch.nn.Module, opts: PruneOptions) -> torch.Tensor:
    """The calibration windows ``[samples, seqlen]`` of the run: from ``calibration.source``, or
    the training split of the task whose allocation is applied (``ctx.applied_task``)."""
    spec = opts.calibration
    context = max_context(model)
    if context is not None and spec.seqlen > context:
        raise ConfigError(f"calibration.seqlen {spec.seqlen} exceeds the model's context of {context} "
                          f"tokens; set calibration.seqlen <= {context}.")
    tokens, name = calibration_tokens(spec, ctx.tokenizer, ctx.applied_task, ctx.seed)
    return calibration_windows(tokens, spec.samples, spec.seqlen, ctx.seed, name)


def prune_model(ctx: RunContext, model: torch.nn.Module, allocation: Allocation, opts: PruneOptions
                ) -> PruneResult:
    """Prune the base linear weights of ``model`` in place as ``allocation`` says; write masks,
    model, sparsity report, plot.

    A scoring adapter (``model.adapter`` with ``layers.lora_only``) is removed first, or merged
    into the base weights with ``merge_adapter``: the pruned model is the base model (see
    :mod:`layerif_core.scope`). The result is checked: the pruned share of every layer's base
    weights equals its target (up to the rounding :func:`shortfall` allows).
    """
    adapter = ("merged" if opts.merge_adapter else "removed") if has_adapter(model) else None
    model = base_model(model, merge=opts.merge_adapter)
    spec = application_layers(ctx.config.layers)
    same = ctx.layer_map.model is model and spec is ctx.config.layers
    layer_map = ctx.layer_map if same else LayerMap(model, spec)
    target = target_sparsities(allocation, layer_map, opts)
    windows = calibration(ctx, model, opts) if opts.pruner != "magnitude" else None
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    checkpoint = None
    if windows is not None and opts.resume:
        checkpoint = BlockCheckpoint(ctx.run_dir, fingerprint(
            {"model": ctx.model_fingerprint, "options": opts.model_dump(exclude={"save_model", "save_masks"}),
             "target": target, "modules": [tm.name for tm in layer_map.modules()]}, windows))
    try:
        masks = prune_blocks(model, layer_map, target, opts, windows, ctx.track, checkpoint)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    run_dir = ctx.run_dir
    if opts.save_masks:
        run_dir.write_tensors("masks.safetensors", masks, {"pruner": opts.pruner, "pattern": opts.pattern,
                                                           "convention": "True = pruned, [d_out, d_in]"})
    model_dir = None
    if opts.save_model:
        model_dir = save_model(model, ctx.tokenizer, run_dir.file("pruned_model"))
        zeros = zeros_in_saved(model_dir, layer_map)
        renamed = {k: v for k, v in zeros_in_memory(layer_map).items() if k not in zeros}
        if renamed:
            log.warning("%d pruned weights are saved under other names; their sparsity is measured "
                        "in memory", len(renamed))
            zeros.update(renamed)
    else:
        zeros = zeros_in_memory(layer_map)
    result = achieved(layer_map, zeros, target)
    check_achieved(layer_map, masks, target, result, opts)
    report = {"pruner": opts.pruner, "pattern": opts.pattern, "allocator": allocation.allocator,
              "scoring_adapter": adapter, "measured_on": str(model_dir) if model_dir else "memory",
              "seconds": round(seconds, 3),
              "target_per_layer": target, "target_overall": result["target_overall"],
              "achieved_overall": result["overall"],
              "achieved_per_layer": result["per_layer"], "achieved_per_module": result["per_module"],
              "calibration": None if windows is None else list(windows.shape)}
    run_dir.write_json("sparsity.json", report)
    plot_sparsity(target, result["per_layer"], run_dir.file("plots/sparsity.png"),
                  f"{opts.pruner} {opts.pattern}, {allocation.allocator}: "
                  f"achieved {result['overall']:.3f}")
    run_dir.manifest.setdefault("timings", {})["prune"] = round(seconds, 3)
    run_dir.save_manifest()
    log.info("pruned with %s (%s): sparsity %.4f over tracked weights in %.1f s", opts.pruner,
             opts.pattern, result["overall"], seconds)
    return PruneResult(model, masks, target, result, seconds, model_dir)


def shortfall(d_out: int, d_in: int, opts: PruneOptions) -> float:
    """How many weights one ``[d_out, d_in]`` matrix may prune fewer than its target: one per row
    for Wanda with ``rounding: floor``, one per column block for SparseGPT, one otherwise."""
    if opts.pruner == "wanda" and opts.rounding == "floor":
        return float(d_out)
    if opts.pruner == "sparsegpt":
        return float(-(-d_in // opts.blocksize))
    return 1.0


def check_achieved(layer_map: LayerMap, masks: dict[str, torch.Tensor], target: list[float],
                   result: dict[str, Any], opts: PruneOptions) -> None:
    """The pruner's masks cover the base linear weights of every layer at the target share (up to
    the rounding :func:`shortfall` allows), and the masked weights are zero."""
    for layer, modules in enumerate(layer_map.layers):
        lora = [tm.name for tm in modules if ".lora_" in tm.name]
        if lora:
            raise RuntimeError(f"pruning reached LoRA tensors ({lora[0]}); it must act on base weights")
        pruned = sum(int(masks[tm.name].sum()) for tm in modules)
        total = sum(masks[tm.name].numel() for tm in modules)
        tol = sum(shortfall(tm.d_out, tm.d_in, opts) for tm in modules) / max(total, 1) + 1e-9
        share = pruned / total if total else 0.0
        if abs(share - target[layer]) > tol or result["per_layer"][layer] < share - 1e-12:
            raise RuntimeError(f"layer {layer}: pruned {share:.4f} of its base weights (zeros "
                               f"{result['per_layer'][layer]:.4f}) for a target of "
                               f"{target[layer]:.4f}")


class Prune:
    """Prune a model with magnitude, Wanda or SparseGPT to the allocation's layer-wise sparsity."""

    conformance_allocator = ("uniform_sparsity", {"sparsity": 0.5})

    def __init__(self, opts: PruneOptions):
        self.opts = opts
        self.result: PruneResult | None = None
        self.metrics: dict[str, float] = {}  # what a study records (layerif_core.protocols.Application)

    def estimate(self, work):
        """What pruning will cost (``layerif study --plan``; :mod:`layerif_prune.cost`)."""
        from layerif_prune.cost import estimate

        return estimate(self.opts, work)

    def apply(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation) -> torch.nn.Module:
        self.result = prune_model(ctx, model, allocation, self.opts)
        self.metrics = {"sparsity/achieved": float(self.result.achieved["overall"]),
                        "sparsity/target": float(self.result.achieved["target_overall"])}
        return self.result.model
