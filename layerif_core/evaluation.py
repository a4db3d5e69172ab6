"""Run the configured evaluators on a model; write ``metrics.json`` and ``metrics.md`` into the run
directory with the provenance (evaluator, provider, versions, lm-eval task versions) of every number.

``metrics.json`` has one shape whichever command wrote it (``layerif run``, ``prune``, ``moe``,
``lora-ranks``, ``eval``, a study cell's run directory), :data:`METRICS_FORMAT` 2::

    {"format": 2,
     "model": {"source": ..., "fingerprint": ...},
     "task": "capitals",                   # the task whose allocation was applied (null: none)
     "application": {"name": "prune", "provider": ..., "version": ..., "seconds": ...},  # or null
     "metrics": {"sparsity/achieved": 0.5, "perplexity/wikitext2": 21.3},  # the application's, then
                                                                           # the evaluators'
     "curves": {"lora_moe/validation_loss": [[0, 2.1], [20, 1.7]]},  # the application's, [step, value]
     "evaluators": [{"name": "perplexity", "provider": ..., "version": ..., "seconds": ...}]}

:func:`read_metrics` also reads the two shapes written before: ``{model, metrics, evaluators}``
(``layerif run`` and ``layerif eval``) and a flat ``{name: value}`` (``layerif prune``, ``moe``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerif_core.config import ComponentSpec
from layerif_core.errors import ConfigError, DataError
from layerif_core.registry import get_registry

METRICS_FORMAT = 2


@dataclass
class EvalReport:
    """Metrics (``name -> float``) and who computed them: per evaluator its provider and versions,
    and the application (with the task it acted for) whose metrics come first."""

    model: dict[str, Any]
    metrics: dict[str, float]
    evaluators: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    task: str | None = None
    application: dict[str, Any] | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": METRICS_FORMAT, "model": self.model, "task": self.task,
                "application": self.application, "metrics": self.metrics, "curves": self.curves,
                "evaluators": self.evaluators}


def check_specs(specs: list[ComponentSpec]) -> None:
    """Fail on unknown evaluator names or options before any model is loaded."""
    if not specs:
        raise ConfigError("the config has no `evaluation:` section; add one, e.g. evaluation: "
                          "[{name: perplexity, options: {source: text.txt}}].")
    registry = get_registry()
    for spec in specs:
        registry.get("evaluator", spec.name).options(spec.options)


def run_evaluators(ctx: Any, model: torch.nn.Module, tokenizer: Any, specs: list[ComponentSpec]
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run ``specs`` on ``model``; return the metrics and, per evaluator, its provenance (name,
    provider, version, what its ``report`` attribute adds, seconds). Nothing is written."""
    check_specs(specs)
    registry = get_registry()
    metrics: dict[str, float] = {}
    provenance: list[dict[str, Any]] = []
    for spec in specs:
        comp = registry.get("evaluator", spec.name)
        evaluator = comp.build(spec.options)
        start = time.perf_counter()
        metrics.update(evaluator.evaluate(ctx, model, tokenizer))
        info: dict[str, Any] = {"name": spec.name, "provider": comp.provider, "version": comp.version}
        info.update({k: v for k, v in (getattr(evaluator, "report", None) or {}).items()
                     if k not in ("evaluator", "provider", "version")})
        info["seconds"] = round(time.perf_counter() - start, 3)
        provenance.append(info)
    return metrics, provenance


def model_info(ctx: Any) -> dict[str, Any]:
    """The ``model`` entry of ``metrics.json``: the configured source and the loaded weights' fingerprint."""
    return {"source": ctx.config.model.source, "fingerprint": getattr(ctx, "model_fingerprint", None)}


def write_report(ctx: Any, report: EvalReport) -> EvalReport:
    """Write ``report`` as ``metrics.json`` and ``metrics.md`` into the run directory of ``ctx``."""
    report.path = ctx.run_dir.write_json("metrics.json", report.to_json())
    _write_text(ctx.run_dir.file("metrics.md"), markdown(report))
    return report


def evaluate_model(ctx: Any, model: torch.nn.Module | None = None, tokenizer: Any = None,
                   specs: list[ComponentSpec] | None = None) -> EvalReport:
    """Run ``specs`` (default ``ctx.config.evaluation``) on ``model`` (default ``ctx.model``) and
    write ``metrics.json`` and ``metrics.md`` into the run directory."""
    specs = list(ctx.config.evaluation if specs is None else specs)
    model = ctx.model if model is None else model
    tokenizer = ctx.tokenizer if tokenizer is None else tokenizer
    metrics, provenance = run_evaluators(ctx, model, tokenizer, specs)
    return write_report(ctx, EvalReport(model=model_info(ctx), metrics=metrics, evaluators=provenance))


def read_metrics(path: str | Path) -> EvalReport:
    """The ``metrics.json`` at ``path`` (or in the run directory ``path``), whichever layerif
    version wrote it: format 2, the earlier ``{model, metrics, evaluators}``, or the earlier flat
    ``{name: value}`` of ``layerif prune`` and ``layerif moe`` (model, task and provenance unknown)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read metrics from '{path}' ({type(exc).__name__}); give a run "
                        "directory or its metrics.json.") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found is not None and found != METRICS_FORMAT:
        raise DataError(f"'{path}' is metrics format {found}, this layerif reads formats 1 and "
                        f"{METRICS_FORMAT}; read it with the layerif version that wrote it, or rerun.")
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        return EvalReport(model=data.get("model") or {}, metrics=data["metrics"],
                          evaluators=list(data.get("evaluators") or []), path=path,
                          task=data.get("task"), application=data.get("application"),
                          curves=data.get("curves") or {})
    if isinstance(data, dict) and all(isinstance(v, int | float) for v in data.values()):
        return EvalReport(model={}, metrics={k: float(v) for k, v in data.items()}, path=path)
    raise DataError(f"'{path}' is not a layerif metrics.json (no `metrics` mapping); give a run "
                    "directory or its metrics.json.")


def _write_text(path: Path, text: str) -> None:
    from layerif_core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fmt(key: str, value: float) -> str:
    if key.endswith(("/tokens", "/windows")) and float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def markdown(report: EvalReport) -> str:
    """The metrics table, the application and evaluators with their versions, and lm-eval's task
    versions."""
    lines = [f"# Evaluation of `{report.model.get('source')}`", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(k, v)} |" for k, v in report.metrics.items()]
    app = report.application
    if app is not None:
        lines += ["", f"Application `{app['name']}` ({app['provider']} {app['version']}, "
                      f"{app['seconds']} s) on the allocation of task `{report.task}`."]
    if report.evaluators:
        lines += ["", "| evaluator | provider | version | seconds |", "|---|---|---|---:|"]
        lines += [f"| {e['name']} | {e['provider']} | {e['version']} | {e['seconds']} |"
                  for e in report.evaluators]
    tasks = [(e, t, info) for e in report.evaluators for t, info in (e.get("tasks") or {}).items()]
    if tasks:
        lines += ["", "| lm-eval task | task version | n-shot | samples | lm-eval |", "|---|---|---|---|---|"]
        for e, task, info in tasks:
            samples = info.get("samples") or {}
            n = f"{samples.get('effective')} of {samples.get('original')}" if samples else ""
            lines.append(f"| {task} | {info.get('version')} | {info.get('n-shot')} | {n} | "
                         f"{e.get('lm_eval_version', '')} |")
    return "\n".join(lines) + "\n"
