"""``layerif prune CONFIG [--scores PATH]``: a thin shell over the pipeline with application=prune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from layerif_core.cli_kit import STATE, ConfigArg, ForceOpt, SetOpt, console, guarded
from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.errors import ConfigError

ScoresOpt = Annotated[Path | None, typer.Option(
    "--scores", help="Use the layer scores of an earlier run (its scores.json or run directory) "
    "instead of computing them.")]


def prepare_config(cfg: RunConfig) -> RunConfig:
    """Default the application to ``prune``; check names and options before loading the model."""
    from layerif_core.registry import get_registry

    if cfg.application is None:
        cfg.application = ComponentSpec(name="prune")
    elif cfg.application.name != "prune":
        raise ConfigError(f"`layerif prune` runs the application 'prune', but the config names "
                          f"'{cfg.application.name}'; use `layerif run` for it.")
    if cfg.allocation is None:
        raise ConfigError("pruning needs an `allocation:` section, e.g. {name: alpha_pruning, "
                          "options: {sparsity: 0.5, epsilon: 0.2}} or {name: uniform_sparsity, ...}.")
    reg = get_registry()
    reg.get("application", "prune").options(cfg.application.options)
    reg.get("allocator", cfg.allocation.name).options(cfg.allocation.options)
    for spec in cfg.evaluation:
        reg.get("evaluator", spec.name).options(spec.options)
    return cfg


def run_prune(cfg: RunConfig, scores_path: Path | None = None, force: bool = False,
              show_progress: bool = True) -> dict:
    """Scores (computed or read), allocation, pruning and evaluation of the task ``apply_to``
    names (:func:`layerif_core.pipeline.run`); returns the run directory and the metrics
    (``sparsity/achieved`` and the evaluators', as in ``metrics.json``)."""
    from layerif_core.pipeline import run

    cfg = prepare_config(cfg)
    cfg.application_task("layerif prune")  # one allocation: refuse apply_to: each before loading
    result = run(cfg, force=force, show_progress=show_progress, scores_path=scores_path)
    return {"run_dir": str(result.run_dir), "metrics": result.metrics}


@guarded
def prune_command(config: ConfigArg, set_: SetOpt = None, scores: ScoresOpt = None,
                  force: ForceOpt = False) -> None:
    """Prune CONFIG's model: layer scores (or --scores), the `allocation:` of sparsity per layer,
    the `application: prune` options (pruner, pattern, calibration), then the `evaluation:`.
    Writes pruned_model/, masks.safetensors, allocation.json, sparsity.json, plots/sparsity.png."""
    from layerif_core.config import load_config

    out = run_prune(load_config(config, set_ or []), scores, force, show_progress=not STATE["quiet"])
    Console().print_json(json.dumps(out["metrics"]))
    console.print(f"results in {out['run_dir']}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
