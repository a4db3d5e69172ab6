"""``layerif moe CONFIG``: a thin shell over :func:`layerif_lora_moe.runner.run_moe`.

(No ``from __future__ import annotations``: typer reads the annotations of the nested command, whose
types are imported locally.)
"""

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from layerif_core.cli_kit import STATE, ConfigArg, ForceOpt, SetOpt, console, guarded

    @app.command("moe")
    @guarded
    def moe(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
            scores: Annotated[Path | None, typer.Option(
                "--scores", help="Use these layer scores (a scores.json or a run directory) instead "
                "of computing them.")] = None) -> None:
        """Train a mixture of LoRA experts whose number per layer follows the layer scores
        (allocation: alphalora_experts unless configured; application: lora_moe options)."""
        from rich.console import Console

        from layerif_core.config import load_config
        from layerif_lora_moe.runner import run_moe

        cfg = load_config(config, set_ or [])
        result = run_moe(cfg, scores_path=scores, force=force, show_progress=not STATE["quiet"])
        alloc = result.allocations[cfg.application_task("layerif moe")]
        console.print(f"experts per layer ({alloc.allocator}): {alloc.values}", highlight=False)
        if result.metrics:
            Console().print_json(json.dumps(result.metrics))
        console.print(f"results in {result.run_dir}")
