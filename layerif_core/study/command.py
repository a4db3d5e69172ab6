"""``layerif study STUDY.yaml [--shard k/N] [--force]`` and ``layerif study report DIR``.

(No torch at module level: the CLI lists its commands without importing it. No ``from __future__
import annotations``: typer reads the annotations of the nested command.)
"""

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach the ``study`` command to the ``layerif`` app."""
    from layerif_core.cli import STATE, console, guarded

    @app.command("study", no_args_is_help=True)
    @guarded
    def study(
        target: Annotated[str, typer.Argument(
            metavar="STUDY.yaml | report", help="A study file to run, or 'report' followed by a "
            "study directory to rebuild its report from the cells it holds.")],
        directory: Annotated[Path | None, typer.Argument(
            metavar="[DIR]", help="With 'report': the study directory (OUTPUT_DIR/NAME).")] = None,
        shard: Annotated[str | None, typer.Option(
            "--shard", help="Run only the cells of shard k of N (k = 0..N-1; a cell belongs to the "
            "shard its id hashes to). Build the report with `layerif study report DIR` afterwards.")]
        = None,
        force: Annotated[bool, typer.Option(
            "--force", help="Start over: delete the study directory's cells and shared results "
            "(also when it was made by a different study config).")] = False,
    ) -> None:
        """Run a comparative study: cells = arms × grid × seeds of a base run config, shared scores,
        factors and dense evaluation done once, one result JSON per cell (a rerun skips finished
        cells), then results.csv, summary.md, plots/ and report.html in the study directory. Exit
        code 1 when a cell failed (the others finish), 2 on bad input."""
        from layerif_core.errors import ConfigError
        from layerif_core.study.cells import parse_shard

        if target == "report":
            if directory is None:
                raise ConfigError("`layerif study report` needs the study directory: "
                                  "layerif study report <output_dir>/<name>.")
            _report(directory, console)
            return
        if directory is not None:
            raise ConfigError(f"unexpected argument '{directory}'; run a study with `layerif study "
                              "STUDY.yaml`, or rebuild a report with `layerif study report DIR`.")
        parsed = parse_shard(shard)
        from layerif_core.study.runner import run_study

        outcome = run_study(Path(target), shard=parsed, force=force, show_progress=not STATE["quiet"],
                            console=console)
        console.print(f"{len(outcome.ran)} cells run, {len(outcome.skipped)} finished earlier "
                      f"(skipped), {len(outcome.failed)} failed; shared work computed: "
                      + ", ".join(f"{k} {v}" for k, v in outcome.shared.items()), highlight=False)
        if parsed is None:
            _report(outcome.directory, console)
        else:
            console.print(f"shard {parsed[0]}/{parsed[1]} done; when every shard is done: "
                          f"layerif study report {outcome.directory}", highlight=False)
        if outcome.failed:
            console.print("[bold red]failed cells[/] (details in cells/<id>.json):", highlight=False)
            for cell_id in outcome.failed:
                console.print(f"  {cell_id}", highlight=False)
            raise typer.Exit(1)


def _report(directory: Path, console) -> None:
    from layerif_core.study.report import build_report

    written = build_report(directory)
    console.print(f"report in {written['report.html']} (summary.md, results.csv, plots/)",
                  highlight=False)
