"""Every extension point of layerif, documented here and nowhere else.

A plugin is a module with functions decorated by :data:`hookimpl`, exposed through the entry-point
group ``layerif`` of its distribution::

    [project.entry-points.layerif]
    my_plugin = "my_package.plugin"

Each component hook receives ``register``, a function already bound to the hook's kind (as
simonw/llm's ``register_models(register)``), so a plugin never names the kind and cannot register an
estimator from the scorer hook::

    @hookimpl
    def layerif_register_estimators(register):
        register("my_estimator", "my_package.estimator:MyEstimator",
                 options="my_package.options:MyOptions", help="One line for `layerif plugins`.")

``register(name, factory, options=None, help="", seeded=True)``:

- ``name``: unique per kind (a clash is reported and the second plugin skipped);
- ``factory``: a callable, or a lazy ``"module:attr"`` reference resolved on first use (keeps
  ``layerif --help`` and ``layerif plugins`` from importing torch). It is called with the validated
  options object (with no argument when the component takes no options) and returns an object
  implementing the matching protocol of :mod:`layerif_core.protocols`;
- ``options``: a pydantic model class (or a ``"module:attr"`` reference to one, in a module that does
  not import torch) validating the ``options:`` mapping of the config; ``extra="forbid"`` makes a
  misspelled option an error with the closest name;
- ``help``: one line (default: the first line of the factory's docstring);
- ``seeded`` (scorers and estimators): whether the result can change with the run's seed: a bool, or
  a callable (or ``"module:attr"`` reference) that answers for the options the component is built
  with, receiving by parameter name any of ``options``, ``spec`` (the configured component) and
  ``config`` (the run). A study computes seed-free scores once for all its seeds; unset: seeded.

The built-ins register through these very hooks (:mod:`layerif_core.builtins`), so a third-party
plugin is a peer of the core. Every plugin is checked when it loads: a ``layerif_*`` function that is
not one of the hooks below, or a hook function asking for an argument its hook does not pass, is an
error naming the plugin and the closest hook. ``layerif plugins check DIST`` runs the conformance
suite over a plugin's components.
"""

from __future__ import annotations

import pluggy

PROJECT = "layerif"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def layerif_register_estimators(register) -> None:
    """Add influence estimators.

    An estimator implements :class:`~layerif_core.protocols.Estimator`: ``fit(ctx, train)`` fits its
    curvature state, ``influence(ctx, train, query)`` returns ``I[l, i]`` (float32 tensor
    ``[L, N]``), the influence of train example i on the summed query loss through layer l, in the
    framework's sign (positive = helpful).
    """


@hookspec
def layerif_register_aggregators(register) -> None:
    """Add aggregators: callables mapping ``I[L, N]`` to layer scores ``S[L]`` that state
    ``higher_is_better`` and, optionally, ``side`` (``"helpful"``, ``"harmful"``, ``"net"`` or
    ``"both"``: which influences they sum; the ``layerif`` scorer records it and warns when that side
    is empty) (:class:`~layerif_core.protocols.Aggregator`)."""


@hookspec
def layerif_register_scorers(register) -> None:
    """Add layer scorers: ``score(ctx, task)`` returns
    :class:`~layerif_core.results.LayerScores` (:class:`~layerif_core.protocols.Scorer`).
    Influence-based scoring is the scorer ``layerif`` (an estimator plus an aggregator); model-only
    baselines are scorers too."""


@hookspec
def layerif_register_allocators(register) -> None:
    """Add allocators: layer scores and a budget (the allocator's options) in, an
    :class:`~layerif_core.results.Allocation` out, the budget kept exactly
    (:class:`~layerif_core.protocols.Allocator`)."""


@hookspec
def layerif_register_applications(register) -> None:
    """Add applications (pruning, LoRA-MoE, LoRA ranks, ...): ``apply(ctx, model, allocation)``
    returns the changed model and writes its artifacts (:class:`~layerif_core.protocols.Application`)."""


@hookspec
def layerif_register_evaluators(register) -> None:
    """Add evaluators (perplexity, lm-eval, ...): ``evaluate(ctx, model, tokenizer)`` returns metric
    name → value (:class:`~layerif_core.protocols.Evaluator`)."""


@hookspec
def layerif_register_commands(app) -> None:
    """Add sub-commands to the ``layerif`` CLI (a :class:`typer.Typer`).

    Application and evaluation plugins use this for ``layerif prune``, ``layerif eval`` and the
    like. The command should stay a thin shell over the plugin's Python API, and its module must not
    import torch at module level (``layerif --help`` loads it).
    """
