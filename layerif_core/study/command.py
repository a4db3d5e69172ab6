"""``layerif study STUDY.yaml [--shard k/N] [--arm A] [--seed S] [--grid X=V] [--force]
[--allow-mixed-hardware] [--executor inline|local|slurm ...]`` and ``layerif study report DIR
[--allow-mixed-hardware]``.

(No torch at module level: the CLI lists its commands without importing it. No ``from __future__
import annotations``: typer reads the annotations of the nested command.)
"""

from pathlib import Path
from typing import Annotated

import typer

from layerif_core.cli_kit import STATE, console, guarded


def register(app: typer.Typer) -> None:
    """Attach the ``study`` command to the ``layerif`` app."""

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
        arm: Annotated[list[str] | None, typer.Option(
            "--arm", metavar="LABEL", help="Run only this arm's cells (its label, or the label as "
            "cell ids spell it; repeatable), e.g. the arms a comparison needs first; the report "
            "shows every finished cell.")] = None,
        seed: Annotated[list[int] | None, typer.Option(
            "--seed", help="Run only this seed's cells (repeatable).")] = None,
        grid: Annotated[list[str] | None, typer.Option(
            "--grid", metavar="AXIS=VALUE", help="Run only the cells at this grid value, the axis "
            "by its path or last part, e.g. sparsity=0.5 (repeatable).")] = None,
        force: Annotated[bool, typer.Option(
            "--force", help="Start over: delete the study directory's cells and shared results "
            "(also when it was made by a different study config).")] = False,
        executor: Annotated[str, typer.Option(
            "--executor", help="inline: the cells one after the other in this process (default). "
            "slurm: one Slurm job per unfinished cell (a job array, through submitit), the shared "
            "stages computed here first; local: the same path in local processes.")] = "inline",
        wait: Annotated[bool | None, typer.Option(
            "--wait/--no-wait", help="Wait for the jobs, then write the report (default); --no-wait "
            "(slurm only) prints the job ids and returns.")] = None,
        time_min: Annotated[int | None, typer.Option(
            "--time", help="Wall-clock limit of one cell's job, in minutes (required with slurm).")]
        = None,
        partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
        gpus_per_cell: Annotated[int | None, typer.Option(
            "--gpus-per-cell", help="GPUs of each job (local: each job sees GPUs 0..N-1; none "
            "by default).")] = None,
        cpus_per_cell: Annotated[int | None, typer.Option(
            "--cpus-per-cell", help="CPUs of each Slurm job.")] = None,
        mem_gb: Annotated[float | None, typer.Option("--mem-gb", help="Memory of each Slurm job, GB.")]
        = None,
        array_parallelism: Annotated[int | None, typer.Option(
            "--array-parallelism", help="Jobs running at once (slurm: the array's %limit; local: "
            "default 1).")] = None,
        slurm_arg: Annotated[list[str] | None, typer.Option(
            "--slurm-arg", metavar="KEY=VALUE", help="Any other sbatch option, e.g. account=proj or "
            "qos=high (repeatable).")] = None,
        plan: Annotated[bool, typer.Option(
            "--plan", help="Run nothing: check every cell's config, list the stages the cells share "
            "and predict each stage's time and peak memory on --device (nothing is downloaded, "
            "loaded or written).")] = False,
        allow_mixed_hardware: Annotated[bool, typer.Option(
            "--allow-mixed-hardware", help="Run cells on a processor other than the one the study's "
            "finished cells ran on, and report cells of several processors together (the summary "
            "warns). Without it both are refused: a study compares arms on one processor model.")]
        = False,
        device: Annotated[str, typer.Option(
            "--device", help="With --plan: the device to plan for, a row of the device table "
            "(H200, H100, A100-80GB, RTX6000-Ada, L40S) or cpu (this machine, measured).")] = "H100",
    ) -> None:
        """Run a comparative study: cells = arms × grid × seeds of a base run config, shared scores,
        factors and dense evaluation done once, one result JSON per cell (a rerun skips finished
        cells), then results.csv, summary.md, plots/ and report.html in the study directory. With
        --executor slurm (or local) each unfinished cell is a submitit job, the shared stages
        computed here first. Exit code 1 when a cell failed or its job ended without a result (the
        others finish), 2 on bad input."""
        from layerif_core.errors import ConfigError
        from layerif_core.study.cells import parse_shard

        if target == "report":
            if directory is None:
                raise ConfigError("`layerif study report` needs the study directory: "
                                  "layerif study report <output_dir>/<name>.")
            _report(directory, console, allow_mixed_hardware)
            return
        if directory is not None:
            raise ConfigError(f"unexpected argument '{directory}'; run a study with `layerif study "
                              "STUDY.yaml`, or rebuild a report with `layerif study report DIR`.")
        if plan:
            from rich.markdown import Markdown

            from layerif_core.study.plan import plan_study

            found = plan_study(Path(target), device, arms=arm, seeds=seed, points=grid)
            console.print(Markdown(found.markdown()))
            return
        from layerif_core.study.executor import ExecutorOptions, parse_slurm_args

        parsed = parse_shard(shard)
        options = ExecutorOptions(executor, time_min=time_min, partition=partition,
                                  gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell,
                                  mem_gb=mem_gb, array_parallelism=array_parallelism,
                                  slurm_args=parse_slurm_args(slurm_arg), wait=wait)
        options.check(parsed)
        if options.name != "inline":
            _submit(Path(target), options, force, console, show_progress=not STATE["quiet"], arms=arm,
                    seeds=seed, points=grid, allow_mixed_hardware=allow_mixed_hardware)
            return
        from layerif_core.study.runner import run_study

        outcome = run_study(Path(target), shard=parsed, force=force, show_progress=not STATE["quiet"],
                            console=console, arms=arm, seeds=seed, points=grid,
                            allow_mixed_hardware=allow_mixed_hardware)
        console.print(f"{len(outcome.ran)} cells run, {len(outcome.skipped)} finished earlier "
                      f"(skipped), {len(outcome.failed)} failed; shared work computed: "
                      + _counts(outcome.shared), highlight=False)
        if parsed is None:
            _report(outcome.directory, console, allow_mixed_hardware)
        else:
            console.print(f"shard {parsed[0]}/{parsed[1]} done; when every shard is done: "
                          f"layerif study report {outcome.directory}", highlight=False)
        _exit_on_failures(outcome, console)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _submit(path: Path, options, force: bool, console, show_progress: bool, arms: list[str] | None,
            seeds: list[int] | None, points: list[str] | None, allow_mixed_hardware: bool) -> None:
    """--executor local|slurm: shared stages here, one job per unfinished cell, wait (or not)."""
    from layerif_core.study.executor import submit_study
    from layerif_core.study.runner import Display

    submission = submit_study(path, options, force=force, show_progress=show_progress, console=console,
                              arms=arms, seeds=seeds, points=points,
                              allow_mixed_hardware=allow_mixed_hardware)
    outcome = submission.outcome
    console.print(f"shared work computed before the jobs: {_counts(outcome.shared)}; "
                  f"{len(submission.pending) + len(submission.jobs)} cells to run as {options.name} jobs, "
                  f"{len(outcome.skipped)} finished earlier (skipped); job logs in {submission.folder}",
                  highlight=False)
    if not options.waits:
        ids = sorted({job_id.split("_")[0] for job_id in outcome.jobs.values()})
        console.print(f"submitted job{'s' if len(ids) > 1 else ''} {', '.join(ids) or '(none)'}; when "
                      f"they end: layerif study report {outcome.directory}", highlight=False)
        _exit_on_failures(outcome, console)
        return
    with Display(outcome.total, show_progress, console) as display:
        submission.wait(display)
    console.print(f"{len(outcome.ran)} cells run, {len(outcome.skipped)} finished earlier (skipped), "
                  f"{len(outcome.failed)} failed, {len(outcome.lost)} lost (job ended without a "
                  f"result); shared work computed by the jobs: {_counts(outcome.jobs_shared)}",
                  highlight=False)
    if outcome.ran or outcome.skipped or outcome.failed:
        _report(outcome.directory, console, allow_mixed_hardware)
    if outcome.lost:
        console.print("[bold red]cells whose job ended without a result[/] (killed, timed out or "
                      "cancelled); rerun the same command to run them:", highlight=False)
        for cell_id in outcome.lost:
            console.print(f"  {cell_id} (job {outcome.jobs[cell_id]})", highlight=False)
    submission.jobs.clear()  # submitit's job objects go now, not at interpreter exit
    _exit_on_failures(outcome, console, lost=bool(outcome.lost))


def _exit_on_failures(outcome, console, lost: bool = False) -> None:
    if outcome.failed:
        console.print("[bold red]failed cells[/] (details in cells/<id>.json):", highlight=False)
        for cell_id in outcome.failed:
            console.print(f"  {cell_id}", highlight=False)
    if outcome.failed or lost:
        raise typer.Exit(1)


def _report(directory: Path, console, allow_mixed_hardware: bool = False) -> None:
    from layerif_core.study.report import build_report

    written = build_report(directory, allow_mixed_hardware)
    console.print(f"report in {written['report.html']} (summary.md, results.csv, plots/)",
                  highlight=False)
