"""The stage after the allocation: the configured application acts on one task's allocation, the
configured evaluators measure what it produced, and ``metrics.json`` records both.

Every command that applies an allocation goes through :func:`apply_allocation`: ``layerif run``,
``layerif prune``, ``layerif moe``, ``layerif lora-ranks`` and each cell of a study. The application
receives the task it acts for in ``ctx.task`` (:attr:`~layerif_core.context.RunContext.applied_task`),
so that its data (calibration, training, validation) come from the task whose allocation it applies.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.errors import ConfigError, DataError
from layerif_core.evaluation import EvalReport, model_info, run_evaluators, write_report
from layerif_core.registry import get_registry
from layerif_core.results import Allocation

log = logging.getLogger("layerif")


@dataclass
class ApplyResult:
    """What :func:`apply_allocation` produced; ``report`` is what ``metrics.json`` holds."""

    model: torch.nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    application: Any = None  # the application object, after ``apply`` (None without one)
    seconds: dict[str, float] = field(default_factory=dict)  # "application", "evaluation" where run
    report: EvalReport | None = None


def application_metrics(app: Any) -> dict[str, float]:
    """What an application measured on what it produced (achieved sparsity, validation loss): its
    optional ``metrics`` attribute (:class:`~layerif_core.protocols.Application`)."""
    return {k: float(v) for k, v in (getattr(app, "metrics", None) or {}).items()}


def application_curves(app: Any) -> dict[str, list[list[float]]]:
    """What it measured along the way as ``[step, value]`` pairs (a LoRA-MoE validation loss), so a
    report can show whether training had converged: its optional ``curves`` attribute."""
    return {k: [[float(x), float(y)] for x, y in v] for k, v in (getattr(app, "curves", None) or {}).items()}


def task_spec(ctx: RunContext, task: TaskSpec | str | None) -> TaskSpec | None:
    """``task`` as the config's :class:`TaskSpec` (a name is looked up among ``ctx.config.tasks``)."""
    if task is None or isinstance(task, TaskSpec):
        return task
    found = {t.name: t for t in ctx.config.tasks}
    if task not in found:
        raise ConfigError(f"task '{task}' is not in the config; use one of {sorted(found)}.")
    return found[task]


def apply_allocation(ctx: RunContext, task: TaskSpec | str | None, allocation: Allocation | None,
                     model: torch.nn.Module | None = None, tokenizer: Any = None, evaluate: bool = True,
                     stage: Callable[[str], None] | None = None) -> ApplyResult:
    """Apply ``allocation`` (the allocation of ``task``) with ``ctx.config.application``, run
    ``ctx.config.evaluation`` on the result, and write ``metrics.json`` and ``metrics.md``.

    Args:
        ctx: the run; its directory receives the application's artifacts and the metrics.
        task: the task whose allocation this is (a :class:`TaskSpec` or its name). The application
            sees it as ``ctx.task`` and draws its data from it; ``metrics.json`` names it.
        allocation: one value per layer; needed when an application is configured.
        model, tokenizer: the model to act on (default ``ctx.model``, ``ctx.tokenizer``).
        evaluate: run the evaluators (False: only the application's own metrics).
        stage: called with the name of each stage as it starts (a study's progress display).

    Returns:
        The changed model and the metrics: the application's ``metrics`` attribute first, then the
        evaluators'. ``metrics.json`` (format 2, :mod:`layerif_core.evaluation`) is written when an
        application or an evaluator ran.
    """
    spec = ctx.config.application
    model = ctx.model if model is None else model
    tokenizer = ctx.tokenizer if tokenizer is None else tokenizer
    target = dataclasses.replace(ctx, task=task_spec(ctx, task))
    result = ApplyResult(model)
    app_info = None
    if spec is not None:
        if allocation is None:
            raise DataError("an application needs an allocation; add an `allocation:` section.")
        if stage is not None:
            stage(f"application {spec.name}")
        comp = get_registry().get("application", spec.name)
        app = comp.build(spec.options)
        log.info("applying '%s' to the allocation of task '%s'", spec.name, target.applied_task.name)
        start = time.perf_counter()
        result.model = app.apply(target, model, allocation)
        result.seconds["application"] = round(time.perf_counter() - start, 3)
        result.application = app
        result.metrics.update(application_metrics(app))
        result.curves = application_curves(app)
        app_info = {"name": spec.name, "provider": comp.provider, "version": comp.version,
                    "seconds": result.seconds["application"]}
    provenance: list[dict[str, Any]] = []
    if evaluate and ctx.config.evaluation:
        if stage is not None:
            stage("evaluation")
        start = time.perf_counter()
        found, provenance = run_evaluators(target, result.model, tokenizer, list(ctx.config.evaluation))
        result.metrics.update(found)
        result.seconds["evaluation"] = round(time.perf_counter() - start, 3)
    if app_info is not None or provenance:
        result.report = write_report(target, EvalReport(
            model=model_info(ctx), metrics=dict(result.metrics), evaluators=provenance,
            task=target.applied_task.name if app_info or target.task else None,
            application=app_info, curves=result.curves))
    return result
