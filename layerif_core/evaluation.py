"""Run the configured evaluators on a model; write ``metrics.json`` and ``metrics.md`` into the run
directory with the provenance (evaluator, provider, versions, lm-eval task versions) of every number.

Used by ``layerif run`` after any application and by the evaluation plugin's ``layerif eval``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerif_core.config import ComponentSpec
from layerif_core.errors import ConfigError
from layerif_core.registry import get_registry


@dataclass
class EvalReport:
    """Metrics (``name -> float``) and, per evaluator, who computed them with which versions."""

    model: dict[str, Any]
    metrics: dict[str, float]
    evaluators: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "metrics": self.metrics, "evaluators": self.evaluators}


def check_specs(specs: list[ComponentSpec]) -> None:
    """Fail on unknown evaluator names or options before any model is loaded."""
    if not specs:
        raise ConfigError("the config has no `evaluation:` section; add one, e.g. evaluation: "
                          "[{name: perplexity, options: {source: text.txt}}].")
    registry = get_registry()
    for spec in specs:
        registry.get("evaluator", spec.name).options(spec.options)


def evaluate_model(ctx: Any, model: torch.nn.Module | None = None, tokenizer: Any = None,
                   specs: list[ComponentSpec] | None = None) -> EvalReport:
    """Run ``specs`` (default ``ctx.config.evaluation``) on ``model`` (default ``ctx.model``) and
    write ``metrics.json`` and ``metrics.md`` into the run directory."""
    specs = list(ctx.config.evaluation if specs is None else specs)
    check_specs(specs)
    model = ctx.model if model is None else model
    tokenizer = ctx.tokenizer if tokenizer is None else tokenizer
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
    report = EvalReport(
        model={"source": ctx.config.model.source, "fingerprint": getattr(ctx, "model_fingerprint", None)},
        metrics=metrics, evaluators=provenance,
    )
    report.path = ctx.run_dir.write_json("metrics.json", report.to_json())
    _write_text(ctx.run_dir.file("metrics.md"), markdown(report))
    return report


def _write_text(path: Path, text: str) -> None:
    from layerif_core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fmt(key: str, value: float) -> str:
    if key.endswith(("/tokens", "/windows")) and float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def markdown(report: EvalReport) -> str:
    """The metrics table, the evaluators with their versions, and lm-eval's task versions."""
    lines = [f"# Evaluation of `{report.model['source']}`", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(k, v)} |" for k, v in report.metrics.items()]
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
