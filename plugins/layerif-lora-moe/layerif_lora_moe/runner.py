"""The Python API behind ``layerif moe``: scores (computed, or read from a ``scores.json``) →
expert allocation → LoRA-MoE training → evaluators, all in one run directory."""

from __future__ import annotations

from pathlib import Path

from layerif_core.artifacts import read_scores as load_scores
from layerif_core.artifacts import scores_input
from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.errors import DataError
from layerif_core.pipeline import RunResult, allocate, compute_layer_scores, open_run
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores


def with_defaults(config: RunConfig) -> RunConfig:
    """``config`` with the allocation (alphalora_experts) and application (lora_moe) filled in."""
    update = {}
    if config.allocation is None:
        update["allocation"] = ComponentSpec(name="alphalora_experts")
    if config.application is None:
        update["application"] = ComponentSpec(name="lora_moe")
    return config.model_copy(update=update) if update else config


def read_scores(path: Path, n_layers: int) -> dict[str, LayerScores]:
    """Layer scores from a ``scores.json`` (or a run directory holding one), checked against the
    model's layer count."""
    scores = load_scores(path)
    for task, s in scores.items():
        if s.values.numel() != n_layers:
            raise DataError(f"'{path}' scores {s.values.numel()} layers for task '{task}' but the model "
                            f"has {n_layers}; these scores come from another model: recompute them.")
    return scores


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
    if scores_path is not None:
        scores = read_scores(scores_path, len(ctx.layer_map))
        ctx.run_dir.update_manifest(scores_input=scores_input(scores_path))
        ctx.run_dir.write_json("scores.json", {t: s.to_json() for t, s in scores.items()})
    else:
        scores = compute_layer_scores(ctx)
    allocations = allocate(ctx, scores)
    model = app.apply(ctx, ctx.model, allocations[config.application_task("layerif moe")])
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        metrics.update(evaluator.evaluate(ctx, model, ctx.tokenizer))
    if metrics:
        ctx.run_dir.write_json("metrics.json", metrics)
    return RunResult(ctx.run_dir.path, scores, allocations, metrics)
