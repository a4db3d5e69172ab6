"""The Python API: the steps of a run, in order. The CLI is a thin shell over these functions.

>>> from layerif_core import load_config, open_run, compute_layer_scores
>>> ctx = open_run(load_config("examples/quickstart.yaml"))
>>> scores = compute_layer_scores(ctx)      # {task: LayerScores}
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerif_core import logs
from layerif_core.apply import ApplyResult, apply_allocation  # noqa: F401 (the Python API)
from layerif_core.artifacts import RunDir, read_scores, scores_input
from layerif_core.config import RunConfig
from layerif_core.context import RunContext
from layerif_core.distributed import init_from_env, shard_model
from layerif_core.errors import DataError
from layerif_core.layers import LayerMap
from layerif_core.models import fingerprint_model, load_model, resolve_device
from layerif_core.plotting import plot_scores
from layerif_core.registry import check_components, get_registry
from layerif_core.results import Allocation, LayerScores
from layerif_core.scope import application_layers
from layerif_core.scoring import score_task as score_task  # re-exported: the Python API
from layerif_core.splits import load_task_splits as load_task_splits  # re-exported: the Python API

log = logging.getLogger("layerif")


def open_run(config: RunConfig, force: bool = False, show_progress: bool = True,
             model: torch.nn.Module | None = None, tokenizer: Any = None) -> RunContext:
    """Load the model (unless given), build the layer map and open the run directory.

    Args:
        config: the run config (``load_config`` parses a file and ``--set`` overrides into one).
        force: recompute artifacts a rerun would otherwise reuse.
        show_progress: progress bars on long passes.
        model, tokenizer: an already loaded model and its tokenizer instead of ``config.model``.

    Returns:
        The :class:`RunContext` every component receives.
    """
    check_components(config)  # unknown names and options fail before the (slow) model load
    init_from_env()  # under torchrun: join the process group (architecture §8)
    run_dir = RunDir(Path(config.output_dir) / config.name, force=force)
    logs.attach_run_log(run_dir.path)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    if model is None:
        model, tokenizer = load_model(config.model)
    load_seconds = time.perf_counter() - start
    layer_map = LayerMap(model, config.layers)
    if config.model.fsdp:
        shard_model(model, list(layer_map.blocks), resolve_device(config.model.device))
    fp = fingerprint_model(model, config.model.source)
    run_dir.update_manifest(
        config=config.model_dump(mode="json"), seed=config.seed,
        model={"source": config.model.source, "class": type(model).__name__, "fingerprint": fp,
               "layers": len(layer_map), "tracked_modules": layer_map.describe()[0],
               "tracked_params_per_layer": layer_map.num_params(),
               "dtype": str(next(model.parameters()).dtype),
               "device": str(next(model.parameters()).device), "load_seconds": round(load_seconds, 2)},
        plugins=get_registry().versions(),
    )
    return RunContext(config, model, tokenizer, layer_map, run_dir, fp, show_progress)


def compute_layer_scores(ctx: RunContext) -> dict[str, LayerScores]:
    """Score every task of ``ctx.config``, then write ``scores.json`` and ``plots/scores.png``.

    Args:
        ctx: the run, from :func:`open_run`.

    Returns:
        Task name → :class:`~layerif_core.results.LayerScores`.
    """
    scores = {task.name: score_task(ctx, task) for task in ctx.config.tasks}
    ctx.run_dir.write_json("scores.json", {name: s.to_json() for name, s in scores.items()})
    plot_scores(scores, ctx.run_dir.file("plots/scores.png"),
                title=f"{ctx.config.model.source}: layer scores")
    ctx.run_dir.save_manifest()
    return scores


def layer_scores(ctx: RunContext, scores_path: str | Path | None = None) -> dict[str, LayerScores]:
    """The layer scores of every task: computed (:func:`compute_layer_scores`), or those of an
    earlier run (``--scores``).

    Args:
        ctx: the run.
        scores_path: an earlier run's ``scores.json`` or run directory. Its scores must be finite and
            have one value per layer of this model; its path and SHA-256 go to the manifest
            (``scores_input``) and the scores are copied to this run's ``scores.json``.
    """
    if scores_path is None:
        return compute_layer_scores(ctx)
    scores = read_scores(scores_path, len(ctx.layer_map))
    ctx.run_dir.update_manifest(scores_input=scores_input(scores_path))
    ctx.run_dir.write_json("scores.json", {t: s.to_json() for t, s in scores.items()})
    return scores


def allocate(ctx: RunContext, scores: dict[str, LayerScores]) -> dict[str, Allocation]:
    """Run the configured allocator (``config.allocation``) on each task's scores and write
    ``allocation.json``. An allocator with an ``allocate_in(ctx, task, scores, weights)`` method
    (:class:`~layerif_core.protocols.Allocator`) is called through it, with the run.

    Args:
        ctx: the run (its layer map gives the parameter count of each layer).
        scores: task name → layer scores, e.g. from :func:`compute_layer_scores`.

    Returns:
        Task name → :class:`~layerif_core.results.Allocation` (empty without an allocator).
    """
    spec = ctx.config.allocation
    if spec is None:
        return {}
    allocator = get_registry().build("allocator", spec.name, spec.options)
    weights = [float(w) for w in allocation_weights(ctx)]
    tasks = {t.name: t for t in ctx.config.tasks}
    within = getattr(allocator, "allocate_in", None)  # an allocator that needs the run (select)
    out = {task: within(ctx, tasks[task], s, weights) if callable(within) else allocator.allocate(s, weights)
           for task, s in scores.items()}
    ctx.run_dir.write_json("allocation.json", {t: a.to_json() for t, a in out.items()})
    return out


def allocation_weights(ctx: RunContext) -> list[int]:
    """Parameters per layer that an allocation's budget is counted in: those of the modules the
    application acts on, every base linear module (:func:`~layerif_core.scope.application_layers`),
    not the subset or the LoRA tensors a run scores through."""
    spec = application_layers(ctx.config.layers)
    if spec is ctx.config.layers:
        return ctx.layer_map.num_params()
    return LayerMap(ctx.model, spec).num_params()


@dataclass
class RunResult:
    """What :func:`run` produced (also on disk in the run directory)."""

    run_dir: Path
    scores: dict[str, LayerScores]
    allocations: dict[str, Allocation] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def run(config: RunConfig, force: bool = False, show_progress: bool = True,
        scores_path: str | Path | None = None) -> RunResult:
    """The whole job: scores, then (if configured) allocation, application and evaluation.

    Args:
        config: the run config. The application and evaluators act on the allocation of the task
            named by ``apply_to`` (the only task when there is one), or with ``apply_to: each`` on
            every task's allocation in turn, each on a freshly loaded model with its artifacts and
            metrics under ``<run>/<task>/`` (metric keys prefixed ``<task>/``).
        force: recompute artifacts a rerun would otherwise reuse.
        show_progress: progress bars on long passes.
        scores_path: the layer scores of an earlier run instead of computing them (:func:`layer_scores`).

    Returns:
        The scores, allocations and metrics: the application's own (``sparsity/achieved``, a
        validation loss) and the evaluators', as in ``metrics.json`` (:func:`apply_allocation`).
    """
    ctx = open_run(config, force=force, show_progress=show_progress)
    scores = layer_scores(ctx, scores_path)
    allocations = allocate(ctx, scores)
    if config.application is not None and not allocations:
        raise DataError("an application needs an allocation; add an `allocation:` section.")
    if config.application is None:
        return RunResult(ctx.run_dir.path, scores, allocations, apply_allocation(ctx, None, None).metrics)
    each = config.apply_to == "each"
    metrics: dict[str, float] = {}
    for task in config.application_tasks():
        target = task_context(ctx, task) if each else ctx
        found = apply_allocation(target, task, allocations[task]).metrics
        metrics.update({f"{task}/{k}" if each else k: v for k, v in found.items()})
    return RunResult(ctx.run_dir.path, scores, allocations, metrics)


def task_context(ctx: RunContext, task: str) -> RunContext:
    """A context for applying one task's allocation: a freshly loaded model and ``<run>/<task>/``."""
    model, tokenizer = load_model(ctx.config.model)
    return dataclasses.replace(ctx, model=model, tokenizer=tokenizer,
                               layer_map=LayerMap(model, ctx.config.layers),
                               run_dir=RunDir(ctx.run_dir.path / task, force=ctx.run_dir.force))
