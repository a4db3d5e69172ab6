"""The ``layerif`` command: a thin shell over :mod:`layerif_core.pipeline`.

Exit codes: 0 success, 2 bad input (a :class:`LayerifError`, printed as one line), 1 internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# the shared pieces; still importable from here for plugins written against earlier versions
from layerif_core.cli_kit import STATE, ConfigArg, ForceOpt, SetOpt, console, guarded
from layerif_core.errors import LayerifError
from layerif_core.study.command import register as register_study

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",
                  help="Which layers of an LLM are well trained for a task: per-layer influence "
                       "scores, and the allocations they drive.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration format.")
app.add_typer(config_app, name="config")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors, and third-party "
                                        "warnings (otherwise kept in the run's log.txt).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")] = False,
) -> None:
    from layerif_core import logs

    STATE.update(debug=debug, quiet=quiet)
    if quiet:  # read by datasets and the hub client when they are imported
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logs.setup(debug=debug, quiet=quiet)


def _load(config: Path, overrides: list[str] | None):
    from layerif_core.config import load_config

    return load_config(config, overrides or [])


def _print_scores(scores: dict) -> None:
    from layerif_core.results import rank_with_ties

    out = Console()
    for task, s in scores.items():
        direction = "higher" if s.higher_is_better else "lower"
        table = Table(title=f"{task}: {s.scorer}", caption=(
            f"{direction} score = better trained; rank 1 = best trained layer; equal scores share "
            "the best rank of their group (1, 2, 2, 4)"))
        table.add_column("layer", justify="right")
        table.add_column(f"score ({direction} = better)", justify="right")
        table.add_column("rank", justify="right")
        values = s.values.tolist()
        for layer, (v, rank) in enumerate(zip(values, rank_with_ties(values, s.higher_is_better),
                                              strict=True)):
            table.add_row(str(layer), f"{v:.4g}", str(rank))
        out.print(table)


@app.command()
@guarded
def run(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Run the whole job of CONFIG: layer scores of every task, then allocation, application and
    evaluation where configured. Results go to OUTPUT_DIR/NAME/."""
    from layerif_core.pipeline import run as run_pipeline

    result = run_pipeline(_load(config, set_), force=force, show_progress=not STATE["quiet"])
    _print_scores(result.scores)
    if result.metrics:
        Console().print_json(json.dumps(result.metrics))
    console.print(f"results in {result.run_dir}")


@app.command()
@guarded
def scores(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False,
           scorer: Annotated[str | None, typer.Option(help="Scorer name (overrides scorer.name).")]
           = None) -> None:
    """Compute only the layer scores of CONFIG's tasks (scores.json, influence, plot)."""
    from layerif_core.pipeline import compute_layer_scores, open_run

    cfg = _load(config, (set_ or []) + ([f"scorer.name={scorer}"] if scorer else []))
    ctx = open_run(cfg, force=force, show_progress=not STATE["quiet"])
    _print_scores(compute_layer_scores(ctx))
    console.print(f"results in {ctx.run_dir.path}")


plugins_app = typer.Typer(help="The registered components and the plugins that provide them.")
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
@guarded
def plugins(ctx: typer.Context,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
            = False) -> None:
    """List every registered estimator, aggregator, scorer, allocator, application and evaluator,
    the plugin distributions with the hooks each implements, and plugins that were not loaded."""
    if ctx.invoked_subcommand is not None:
        return
    from layerif_core.registry import get_registry

    registry = get_registry()
    if as_json:
        typer.echo(json.dumps({
            "components": [{"kind": c.kind, "name": c.name, "provider": c.provider,
                            "version": c.version, "description": c.help} for c in registry.all()],
            "plugins": [{"provider": p.provider, "version": p.version, "module": p.module,
                         "hooks": p.hooks} for p in registry.plugins],
            "problems": [{"provider": p.provider, "message": p.message} for p in registry.problems],
        }, indent=2))
        return
    out = Console()
    table = Table(title="layerif components")
    for col in ("kind", "name", "provider", "version", "description"):
        table.add_column(col)
    for c in registry.all():
        table.add_row(c.kind, c.name, c.provider, c.version, c.help)
    out.print(table)
    dists = Table(title="plugin distributions")
    for col in ("distribution", "version", "module", "hooks"):
        dists.add_column(col)
    for p in registry.plugins:
        dists.add_row(p.provider, p.version, p.module,
                      ", ".join(h.removeprefix("layerif_register_") for h in p.hooks))
    out.print(dists)
    for p in registry.problems:
        console.print(f"[yellow]not loaded[/] {p.provider}: {p.message}", highlight=False)


@plugins_app.command("check")
@guarded
def plugins_check(name: Annotated[str, typer.Argument(
        help="A plugin distribution (e.g. layerif-prune) or a component name (e.g. ekfac).")]) -> None:
    """Run the conformance suite over a plugin's components: each is built with its example options
    and driven through its protocol on a tiny random Llama. Exit code 1 if any fails."""
    from layerif_core.conformance import components_of, run_checks

    table = Table(title=f"conformance: {name}")
    for col in ("kind", "name", "provider", "result", "seconds"):
        table.add_column(col)
    failed = 0
    for r in run_checks(components_of(name)):
        failed += not r.ok
        table.add_row(r.kind, r.name, r.provider, "ok" if r.ok else f"[red]FAILED[/] {r.message}",
                      f"{r.seconds:.1f}")
    Console().print(table)
    if failed:
        console.print(f"{failed} component(s) failed; each row says what its protocol expected.")
        raise typer.Exit(1)


@app.command()
@guarded
def tasks() -> None:
    """List the bundled tasks and text corpora (usable as data source 'bundled:NAME')."""
    from layerif_core.tasks import BUNDLED, TEXTS, bundled_records

    for name in BUNDLED:
        ex = bundled_records(name, "train", n=1)[0]
        typer.echo(f"bundled:{name:<12} e.g. {ex['question']!r} -> {ex['answer']!r}")
    for name, splits in TEXTS.items():
        typer.echo(f"bundled:{name:<12} text, one record per line (splits {', '.join(splits)}; "
                   "pack: true cuts it into max_length windows)")


INIT_TEMPLATE = """\
# layerif run config. Every key: `layerif config schema`. Override any key on the command line
# with --set path.to.key=value (e.g. --set tasks.0.train.limit=32).
name: quickstart                 # results go to <output_dir>/<name>/
output_dir: runs
seed: 0
model:
  source: embedded:smollm2-135m  # hub name, local dir, .gguf file, or embedded:smollm2-135m
  dtype: auto                    # float32 on CPU, bfloat16 on GPU
  device: auto
  trust_remote_code: false       # only for models whose code you trust
layers:
  modules: all                   # all | attention | mlp
  regex: null                    # e.g. "q_proj|v_proj"
tasks:                           # each task gets its own layer scores
  - name: arithmetic
    train:      {source: "bundled:arithmetic", split: train, limit: 64, max_length: 64}
    validation: {source: "bundled:arithmetic", split: validation, limit: 16, max_length: 64}
  - name: capitals
    train:      {source: "bundled:capitals", split: train, limit: 64, max_length: 64}
    validation: {source: "bundled:capitals", split: validation, limit: 16, max_length: 64}
scorer:
  name: layerif                  # or a baseline scorer (see `layerif plugins`)
  estimator: {name: grad_dot}    # influence estimator
  aggregator: {name: helpful_sum}   # LayerIF's +VE: sum_i max(I[l,i], 0), helpful influence;
                                    # higher = more influence flows = less mature layer
batch_size: 8
"""


@app.command()
@guarded
def init(path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("layerif.yaml"),
         overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False) -> None:
    """Write a commented example config that runs as it is."""
    if path.exists() and not overwrite:
        raise LayerifError(f"'{path}' exists; pass --overwrite or choose another path.")
    path.write_text(INIT_TEMPLATE)
    console.print(f"wrote {path}; run it with `layerif run {path}`")


@config_app.command("schema")
@guarded
def schema() -> None:
    """Print the JSON Schema of the run config."""
    from layerif_core.config import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


@config_app.command("check")
@guarded
def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate CONFIG (keys, values, plugin names) without loading the model."""
    from layerif_core.registry import check_components

    check_components(_load(config, set_))
    typer.echo(f"{config}: ok")


@app.command("compare-scores")
@guarded
def compare_scores(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or scores.json files).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Plot of every score vector over "
                                         "the layer index (PNG; correlations go beside it as .json).")]
    = Path("compare-scores.png"),
) -> None:
    """Spearman and Kendall correlations between the layer scores of RUNS (oriented so that larger
    = worse trained), and a plot of all of them over the layer index."""
    from layerif_core import compare

    result = compare.compare_scores(list(runs))
    out = Console()
    for title, matrix in (("Spearman ρ", result.spearman), ("Kendall τ", result.kendall)):
        table = Table(title=f"{title} (worse-ness oriented)")
        table.add_column("")
        for i in range(len(result.series)):
            table.add_column(str(i), justify="right")
        for i, (s, row) in enumerate(zip(result.series, matrix, strict=True)):
            table.add_row(f"{i} {s.label}", *("n/a" if v != v else f"{v:.3f}" for v in row))
        out.print(table)
    compare.plot_comparison(result, output)
    compare.write_comparison(result, output.with_suffix(".json"))
    console.print(f"plot in {output}; correlations in {output.with_suffix('.json')}")


@app.command()
@guarded
def finetune(config: ConfigArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """LoRA fine-tune CONFIG's model on finetune.data (default: the first task's train split) and save
    the adapter in peft's format (finetune.output, else model.adapter, else RUN_DIR/adapter); resumes
    from its latest checkpoint."""
    from layerif_core.finetune import finetune as run_finetune

    result = run_finetune(_load(config, set_), show_progress=not STATE["quiet"], force=force)
    if result.losses:
        console.print(f"{result.steps} steps; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    console.print(f"adapter in {result.adapter_dir}; score with model.adapter={result.adapter_dir} "
                  "and layers.lora_only=true")


register_study(app)  # `layerif study`: comparative studies (layerif_core/study)


def main() -> None:
    """Console entry point: load plugins (which may add commands), then run the CLI."""
    from layerif_core.registry import get_registry

    get_registry(app=app)
    app()


if __name__ == "__main__":
    sys.exit(main())
