"""``layerif lora-ranks CONFIG [--scores RUN]``: a thin shell over
:func:`layerif_lora_ranks.runner.run_lora_ranks`.

No torch, transformers or peft at module level (``layerif --help`` stays fast), and no
``from __future__ import annotations``: typer reads the annotations of the nested command.
"""

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from layerif_core.cli_kit import STATE, ConfigArg, ForceOpt, SetOpt, console, guarded

    @app.command("lora-ranks")
    @guarded
    def lora_ranks(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
                   scores: Annotated[Path | None, typer.Option(
                       "--scores", help="Use the layer scores of an earlier run (its scores.json or "
                       "run directory) instead of computing them.")] = None) -> None:
        """A LoRA rank per layer from the layer scores (or --scores), under the parameter budget of
        the uniform adapter that finetune: describes (allocation: lora_ranks options); writes
        lora_config/ (peft LoraConfig with rank_pattern), allocation.json, plots/lora_ranks.png, and
        fine-tunes and evaluates when the config has a finetune: section."""
        from rich.console import Console

        from layerif_core.config import load_config
        from layerif_lora_ranks.runner import run_lora_ranks

        result = run_lora_ranks(load_config(config, set_ or []), scores_path=scores, force=force,
                                show_progress=not STATE["quiet"])
        alloc = next(iter(result.allocations.values()))
        for kind, ranks in alloc.details["ranks"].items():
            console.print(f"ranks ({kind}): {ranks}", highlight=False)
        console.print(f"LoRA parameters {alloc.details['params']} (uniform adapter "
                      f"{alloc.details['budget']})", highlight=False)
        if result.metrics:
            Console().print_json(json.dumps(result.metrics))
        console.print(f"results in {result.run_dir}")
