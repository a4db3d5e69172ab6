"""``layerif eval CONFIG``: a thin shell over :func:`layerif_core.evaluation.evaluate_model`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from layerif_core.cli_kit import STATE, ConfigArg, ForceOpt, SetOpt, console, guarded

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Evaluate this model instead of the config's (hub name, local directory, "
    ".gguf file or embedded:smollm2-135m).")]


@guarded
def eval_command(config: ConfigArg, set_: SetOpt = None, model: ModelOpt = None,
                 force: ForceOpt = False) -> None:
    """Evaluate CONFIG's model (or --model) with the evaluators of its `evaluation:` section;
    writes metrics.json and metrics.md into the run directory."""
    from layerif_core.config import load_config
    from layerif_core.evaluation import check_specs, evaluate_model
    from layerif_core.pipeline import open_run

    cfg = load_config(config, set_ or [])
    if model is not None:
        cfg.model.source = model
    check_specs(cfg.evaluation)
    ctx = open_run(cfg, force=force, show_progress=not STATE["quiet"])
    report = evaluate_model(ctx)
    table = Table(title=f"{cfg.model.source}: evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.metrics.items():
        table.add_row(key, f"{value:.6g}")
    Console().print(table)
    console.print(f"results in {report.path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
