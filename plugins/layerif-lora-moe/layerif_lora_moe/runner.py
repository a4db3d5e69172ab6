"""The Python API behind ``layerif moe``: scores (computed, or read from a ``scores.json``) →
expert allocation → LoRA-MoE training → evaluators, all in one run directory."""

from __future__ import annotations

from pathlib import Path

from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.pipeline import RunResult, allocate, layer_scores, open_run
from layerif_core.registry import get_registry


def with_defaults(config: RunConfig) -> RunConfig:
    """``config`` with the allocation (alphalora_experts) and application (lora_moe) filled in."""
    update = {}
    if config.allocation is None:
        update["allocation"] = ComponentSpec(name="alphalora_experts")
    if config.application is None:
        update["application"] = ComponentSpec(name="lora_moe")
    return config.model_copy(update=update) if update else config


def run_moe(config: RunConfig, scores_path: Path | None = None, force: bool = False,
            show_progress: bool = True) -> RunResult:
    """Scores → allocation → LoRA-MoE training → evaluation, on the allocation of the task that
    ``apply_to`` names (the only task when there is one)."""
    config = with_defaults(config)
    registry = get_registry()
    # fail on bad options before the (slow) model load
    registry.get("allocator", config.allocation.name).options(config.allocation.options)
    app = registry.build("application", config.application.name, config.application.options)
    evaluators = [registry.build("evaluator", s.name, s.options) for s in config.evaluation]
    ctx = open_run(config, force=force, show_progress=show_progress)
    scores = layer_scores(ctx, scores_path)
    allocations = allocate(ctx, scores)
    model = app.apply(ctx, ctx.model, allocations[config.application_task("layerif moe")])
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        metrics.update(evaluator.evaluate(ctx, model, ctx.tokenizer))
    if metrics:
        ctx.run_dir.write_json("metrics.json", metrics)
    return RunResult(ctx.run_dir.path, scores, allocations, metrics)
