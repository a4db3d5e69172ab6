"""The Python API behind ``layerif moe``: scores (computed, or read from a ``scores.json``) →
expert allocation → LoRA-MoE training → evaluators, all in one run directory."""

from __future__ import annotations

from pathlib import Path

from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.pipeline import RunResult, run


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
    """Scores → allocation → LoRA-MoE training → evaluation, on the allocation and the data of the
    task that ``apply_to`` names (the only task when there is one): :func:`layerif_core.pipeline.run`.
    The metrics are the validation loss and the evaluators', as in ``metrics.json``."""
    config = with_defaults(config)
    config.application_task("layerif moe")  # one allocation: refuse apply_to: each before loading
    return run(config, force=force, show_progress=show_progress, scores_path=scores_path)
