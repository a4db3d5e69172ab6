"""Every extension point of layerif, documented here and nowhere else.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, exposed through the
entry-point group ``layerif`` of its distribution::

    [project.entry-points.layerif]
    my_plugin = "my_package.plugin"

Each hook receives the :class:`~layerif_core.registry.Registry` and adds named factories to it.
The built-in estimators, aggregators and scorers register through these very hooks
(``layerif_core.builtins``), so a third-party plugin is a peer of the core.

A factory is called with one argument, the validated options object of the config class given at
registration (a pydantic model; ``None`` when the component takes no options), and returns an object
implementing the matching protocol of :mod:`layerif_core.protocols`.
"""

from __future__ import annotations

import pluggy

PROJECT = "layerif"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def layerif_register_estimators(registry) -> None:
    """Add influence estimators: ``registry.add("estimator", name, factory, config=Cfg)``.

    An estimator implements :class:`~layerif_core.protocols.Estimator`: ``fit(ctx, train)`` fits its
    curvature state, ``influence(ctx, train, query)`` returns ``I[l, i]`` (float32 tensor
    ``[L, N]``), the influence of train example i on the summed query loss through layer l, in the
    framework's sign (positive = helpful).
    """


@hookspec
def layerif_register_aggregators(registry) -> None:
    """Add aggregators: ``registry.add("aggregator", name, factory, config=Cfg)``.

    An aggregator implements :class:`~layerif_core.protocols.Aggregator`: it maps ``I[L, N]`` to
    layer scores ``S[L]`` and states ``higher_is_better``.
    """


@hookspec
def layerif_register_scorers(registry) -> None:
    """Add layer scorers: ``registry.add("scorer", name, factory, config=Cfg)``.

    A scorer implements :class:`~layerif_core.protocols.Scorer`: ``score(ctx, task)`` returns
    :class:`~layerif_core.protocols.LayerScores`. Influence-based scoring is the scorer
    ``layerif`` (an estimator plus an aggregator); model-only baselines are scorers too.
    """


@hookspec
def layerif_register_allocators(registry) -> None:
    """Add allocators: ``registry.add("allocator", name, factory, config=Cfg)``.

    An allocator implements :class:`~layerif_core.protocols.Allocator`: layer scores and a budget
    in, an :class:`~layerif_core.protocols.Allocation` out, the budget kept exactly.
    """


@hookspec
def layerif_register_applications(registry) -> None:
    """Add applications (pruning, LoRA-MoE, ...): ``registry.add("application", name, factory)``.

    An application implements :class:`~layerif_core.protocols.Application`.
    """


@hookspec
def layerif_register_evaluators(registry) -> None:
    """Add evaluators (perplexity, lm-eval, ...): ``registry.add("evaluator", name, factory)``.

    An evaluator implements :class:`~layerif_core.protocols.Evaluator`.
    """


@hookspec
def layerif_register_commands(app) -> None:
    """Add sub-commands to the ``layerif`` CLI (a :class:`typer.Typer`).

    Application and evaluation plugins use this for ``layerif prune``, ``layerif eval`` and the
    like; the command should stay a thin shell over the plugin's Python API.
    """
