"""The Python API behind ``layerif lora-ranks``: scores (computed, or an earlier run's
``scores.json``) → rank allocation → LoraConfig → fine-tune and evaluators when configured."""

from __future__ import annotations

from pathlib import Path

from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.errors import ConfigError
from layerif_core.pipeline import RunResult, allocate, apply_allocation, layer_scores, open_run
from layerif_core.registry import get_registry
from layerif_lora_ranks.allocator import check_bounds
from layerif_lora_ranks.options import RankOptions

NAME = "lora_ranks"


def with_defaults(config: RunConfig) -> RunConfig:
    """``config`` with allocation and application ``lora_ranks`` filled in (other names refused)."""
    update = {}
    for key in ("allocation", "application"):
        spec = getattr(config, key)
        if spec is None:
            update[key] = ComponentSpec(name=NAME)
        elif spec.name != NAME:
            raise ConfigError(f"`layerif lora-ranks` uses {key} '{NAME}', but the config names "
                              f"'{spec.name}'; set {key}.name: {NAME} or use `layerif run`.")
    return config.model_copy(update=update) if update else config


def check_options(config: RunConfig) -> RankOptions:
    """Every option and bound that can be checked before the model loads."""
    registry = get_registry()
    opts = registry.get("allocator", NAME).options(config.allocation.options)
    registry.get("application", NAME).options(config.application.options)
    for spec in config.evaluation:
        registry.get("evaluator", spec.name).options(spec.options)
    ranks = opts.rank.items() if isinstance(opts.rank, dict) else [
        ("the adapter", opts.rank or config.finetune.rank)]
    for what, rank in ranks:
        check_bounds(rank, opts, what if what == "the adapter" else f"module type '{what}'")
    return opts


def run_lora_ranks(config: RunConfig, scores_path: Path | None = None, force: bool = False,
                   show_progress: bool = True) -> RunResult:
    """Scores → ranks → LoraConfig (→ fine-tune → evaluators), on the scores and the data of the
    task apply_to names (:func:`layerif_core.pipeline.apply_allocation`). The evaluators run only on
    a fine-tuned adapter; the metrics are those of ``metrics.json`` and, with ``compare_uniform``,
    the uniform adapter's (``uniform/...``)."""
    config = with_defaults(config)
    check_options(config)
    task = config.application_task("layerif lora-ranks")
    trains = get_registry().build("application", NAME, config.application.options).train_enabled(config)
    ctx = open_run(config, force=force, show_progress=show_progress)
    scores = layer_scores(ctx, scores_path)
    applied = apply_allocation(ctx, task, allocate(ctx, scores)[task], evaluate=trains)
    app = applied.application
    return RunResult(ctx.run_dir.path, scores, {task: app.allocation},
                     {**applied.metrics, **app.metrics_uniform})
