"""The plugin conformance suite: every registered component through its protocol on a tiny model.

One check per component (as peft runs one suite over every method): build it with its example
options, run it on a tiny random Llama with a bundled task, and check the shapes, types and
finiteness its protocol promises. ``layerif plugins check NAME`` runs it for a distribution or a
component; ``tests/plugins/test_conformance.py`` runs it over everything registered.

Options: a component is built with the first entry of its options class's
``model_config["json_schema_extra"]["examples"]`` when it declares one (required options, or
settings small enough for a tiny model), else with the defaults. An application names the allocator
that makes its allocation in a class attribute ``conformance_allocator = (name, options)``; an
allocator that needs the run (``allocate_in``) names its application in ``conformance_application``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerif_core.registry import Component, Registry, get_registry

TINY_TASK = {"name": "capitals",
             "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
             "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                            "max_length": 96}}


@dataclass
class CheckResult:
    """The outcome of one component's check."""

    kind: str
    name: str
    provider: str
    ok: bool
    message: str
    seconds: float


class ConformanceError(AssertionError):
    """A component does not do what its protocol promises."""


def example_options(comp: Component) -> dict[str, Any]:
    """The options a component is checked with: its declared example, else the defaults."""
    cls = comp.options_class
    if cls is None:
        return {}
    extra = cls.model_config.get("json_schema_extra") or {}
    examples = extra.get("examples") if isinstance(extra, dict) else None
    return dict(examples[0]) if examples else {}


def _ctx(workdir: Path, **fields: Any):
    from layerif_core.config import RunConfig
    from layerif_core.pipeline import open_run
    from layerif_core.testing import char_tokenizer, tiny_model

    config = RunConfig.model_validate({"name": "conformance", "output_dir": str(workdir),
                                       "tasks": [TINY_TASK], "batch_size": 4, **fields})
    return open_run(config, show_progress=False, model=tiny_model("llama"), tokenizer=char_tokenizer())


def _finite(values: Any, what: str) -> None:
    if not all(math.isfinite(float(v)) for v in values):
        raise ConformanceError(f"{what} has non-finite values: {list(values)[:8]}")


def _check_estimator(comp: Component, workdir: Path) -> None:
    import torch

    from layerif_core.protocols import Estimator
    from layerif_core.splits import load_task_splits

    ctx = _ctx(workdir)
    est = comp.build(example_options(comp))
    if not isinstance(est, Estimator):
        raise ConformanceError("the factory's object has no fit(ctx, train) / influence(ctx, train, query)")
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    est.fit(ctx, train)
    out = est.influence(ctx, train, query)
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32:
        raise ConformanceError(f"influence() must return a float32 tensor, got {type(out).__name__} "
                               f"{getattr(out, 'dtype', '')}")
    if tuple(out.shape) != (len(ctx.layer_map), len(train)):
        raise ConformanceError(f"influence() returned shape {tuple(out.shape)}, expected "
                               f"[layers, train examples] = {(len(ctx.layer_map), len(train))}")
    _finite(out.flatten().tolist(), "influence()")


def _check_aggregator(comp: Component, workdir: Path) -> None:
    import torch

    from layerif_core.protocols import Aggregator

    agg = comp.build(example_options(comp))
    if not isinstance(agg, Aggregator) or not isinstance(agg.higher_is_better, bool):
        raise ConformanceError("an aggregator is callable and states higher_is_better (a bool)")
    influence = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    out = agg(influence)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4,):
        raise ConformanceError(f"an aggregator maps [L, N] to [L]; got {getattr(out, 'shape', out)!r}")
    _finite(out.tolist(), "the aggregated scores")


def _scores(n_layers: int):
    import torch

    from layerif_core.results import LayerScores

    return LayerScores(torch.linspace(0.0, 1.0, n_layers), higher_is_better=False, scorer="conformance")


def _check_scorer(comp: Component, workdir: Path) -> None:
    from layerif_core.protocols import Scorer
    from layerif_core.results import LayerScores

    ctx = _ctx(workdir, scorer={"name": comp.name, "options": example_options(comp)})
    scorer = comp.build(example_options(comp))
    if not isinstance(scorer, Scorer):
        raise ConformanceError("a scorer has score(ctx, task)")
    out = scorer.score(ctx, ctx.config.tasks[0])
    if not isinstance(out, LayerScores):
        raise ConformanceError(f"score() must return LayerScores, got {type(out).__name__}")
    if tuple(out.values.shape) != (len(ctx.layer_map),):
        raise ConformanceError(f"score() returned {tuple(out.values.shape)} values for "
                               f"{len(ctx.layer_map)} layers")
    _finite(out.values.tolist(), "the layer scores")


def _check_allocator(comp: Component, workdir: Path) -> None:
    from layerif_core.protocols import Allocator
    from layerif_core.results import Allocation

    alloc = comp.build(example_options(comp))
    if not isinstance(alloc, Allocator):
        raise ConformanceError("an allocator has allocate(scores, weights)")
    n = 3  # the tiny model's layers; examples are written for it
    if callable(getattr(alloc, "allocate_in", None)):
        out = _allocate_in(comp, alloc, workdir)
        n = len(out.values) if isinstance(out, Allocation) else n
    else:
        out = alloc.allocate(_scores(n), [100.0] * n)
    if not isinstance(out, Allocation) or len(out.values) != n:
        raise ConformanceError(f"allocate() must return an Allocation with one value per layer ({n}); "
                               f"got {out!r}")
    _finite(out.values, "the allocation")


def _allocate_in(comp: Component, alloc: Any, workdir: Path) -> Any:
    """An allocator that needs the run (``allocate_in``), in a run with the application its
    ``conformance_application = (name, options)`` class attribute names."""
    spec = getattr(alloc, "conformance_application", None)
    if spec is None:
        raise ConformanceError("an allocator with allocate_in states conformance_application = "
                               "(application name, options), the application of the run it needs")
    ctx = _ctx(workdir, allocation={"name": comp.name, "options": example_options(comp)},
               application={"name": spec[0], "options": spec[1]})
    weights = [float(w) for w in ctx.layer_map.num_params()]
    return alloc.allocate_in(ctx, ctx.config.tasks[0], _scores(len(weights)), weights)


def _check_application(comp: Component, workdir: Path) -> None:
    import torch

    from layerif_core.protocols import Application

    app = comp.build(example_options(comp))
    if not isinstance(app, Application):
        raise ConformanceError("an application has apply(ctx, model, allocation)")
    spec = getattr(app, "conformance_allocator", None)
    if spec is None:
        raise ConformanceError("an application states conformance_allocator = (allocator name, "
                               "options), the allocator that makes the allocation it applies")
    ctx = _ctx(workdir, allocation={"name": spec[0], "options": spec[1]},
               application={"name": comp.name, "options": example_options(comp)})
    allocation = get_registry().build("allocator", spec[0], spec[1]).allocate(
        _scores(len(ctx.layer_map)), [float(w) for w in ctx.layer_map.num_params()])
    model = app.apply(ctx, ctx.model, allocation)
    if not isinstance(model, torch.nn.Module):
        raise ConformanceError(f"apply() must return the model, got {type(model).__name__}")


def _check_evaluator(comp: Component, workdir: Path) -> None:
    from layerif_core.protocols import Evaluator

    ctx = _ctx(workdir, evaluation=[{"name": comp.name, "options": example_options(comp)}])
    ev = comp.build(example_options(comp))
    if not isinstance(ev, Evaluator):
        raise ConformanceError("an evaluator has evaluate(ctx, model, tokenizer)")
    out = ev.evaluate(ctx, ctx.model, ctx.tokenizer)
    if not isinstance(out, dict) or not out or not all(isinstance(k, str) for k in out):
        raise ConformanceError(f"evaluate() must return a non-empty dict of metric -> value, got {out!r}")
    _finite(out.values(), "the metrics")


CHECKS = {"estimator": _check_estimator, "aggregator": _check_aggregator, "scorer": _check_scorer,
          "allocator": _check_allocator, "application": _check_application,
          "evaluator": _check_evaluator}


def check_component(comp: Component) -> CheckResult:
    """Run one component through its protocol; the result says what failed and why."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layerif-conformance-") as tmp:
        try:
            CHECKS[comp.kind](comp, Path(tmp))
        except Exception as exc:
            message = str(exc) if isinstance(exc, ConformanceError) else f"{type(exc).__name__}: {exc}"
            return CheckResult(comp.kind, comp.name, comp.provider, False, message,
                               time.perf_counter() - start)
    return CheckResult(comp.kind, comp.name, comp.provider, True, "ok", time.perf_counter() - start)


def components_of(target: str, registry: Registry | None = None) -> list[Component]:
    """The components of a distribution (``layerif-prune``) or one component name (``ekfac``)."""
    from layerif_core.errors import PluginError, closest

    registry = registry or get_registry()
    found = registry.provided_by(target) or [c for c in registry.all() if c.name == target]
    if not found:
        names = sorted({c.provider for c in registry.all()} | {c.name for c in registry.all()})
        raise PluginError(f"no plugin distribution or component named '{target}'{closest(target, names)};"
                          " `layerif plugins` lists them.")
    return found


def run_checks(components: list[Component]) -> Iterator[CheckResult]:
    for comp in components:
        yield check_component(comp)
