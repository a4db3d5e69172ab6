"""The shapes every component implements (architecture §3).

Protocols are runtime-checkable so the registry and the conformance suite can check a plugin's
object, but any class with these methods works; nothing needs to inherit from them. The values they
exchange, :class:`LayerScores` and :class:`Allocation`, live in :mod:`layerif_core.results`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from layerif_core.results import Allocation, LayerScores

if TYPE_CHECKING:
    import torch

    from layerif_core.context import RunContext
    from layerif_core.data import TokenizedSplit

__all__ = ["Aggregator", "Allocation", "Allocator", "Application", "Estimator", "Evaluator",
           "LayerScores", "Scorer"]


@runtime_checkable
class Estimator(Protocol):
    """Per-layer influence ``I[l, i] = (q^l)ᵀ (G_l + λ_l I)^{-1} g_i^l`` (architecture §4)."""

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """Fit and persist curvature state (a no-op for ``grad_dot``).

        Args:
            ctx: the run: model, layer map (which modules of which layer), run directory for cached
                factors, batch size, seed.
            train: the tokenised training split whose examples are the ``i`` of ``I[l, i]``.
        """

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        """Return ``I`` as float32 ``[L, N_train]``: influence on the summed query loss, positive =
        helpful (up-weighting example i lowers the query loss).

        Args:
            ctx: the run, as for :meth:`fit`.
            train: the training split (``N_train`` examples, in order).
            query: the validation split whose summed loss is measured.
        """


@runtime_checkable
class Aggregator(Protocol):
    """Influence matrix ``[L, N]`` to layer scores ``[L]``; ``higher_is_better`` states whether a
    larger score marks a better-trained layer. An optional ``side`` attribute says which influences
    are summed (``"helpful"``, ``"harmful"``, ``"net"``, ``"both"``)."""

    higher_is_better: bool

    def __call__(self, influence: torch.Tensor) -> torch.Tensor:
        """Args: influence: ``I[L, N]`` float32, framework sign. Returns ``S[L]`` float32."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores layers: influence-based or a model-only baseline."""

    def score(self, ctx: RunContext, task: Any) -> LayerScores:
        """Args: ctx: the run; task: the :class:`~layerif_core.config.TaskSpec` being scored (its
        train and validation data). Returns one score per decoder layer with its direction."""


@runtime_checkable
class Allocator(Protocol):
    """Layer scores to an exact per-layer allocation; the budget (target sparsity, total experts,
    rank budget) is part of the allocator's options. An allocator may also define
    ``allocate_in(ctx, task, scores, weights)`` (see below), which the pipeline calls instead."""

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        """Args: scores: one per layer, oriented by ``scores.worseness()`` (larger = worse trained,
        gets more); weights: the layers' parameter counts, for parameter-weighted budgets."""

    # Optional: ``allocate_in(self, ctx, task, scores, weights) -> Allocation``. An allocator that
    # needs the run itself (its model, application and data: ``select`` prunes and evaluates its
    # candidates) defines it; ``pipeline.allocate`` (``layerif run``/``prune``, every study cell)
    # then calls it instead of ``allocate``, with the run context and the TaskSpec being allocated.


@runtime_checkable
class Application(Protocol):
    """Turns an allocation into a changed model (pruned, LoRA-MoE trained), writing artifacts.

    Optional attributes, set by ``apply``, that ``metrics.json`` and a study record: ``metrics``
    (name -> float, e.g. ``sparsity/achieved``) and ``curves`` (name -> ``[[step, value], ...]``,
    plotted by the report for the first seed).
    """

    def apply(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation) -> torch.nn.Module:
        """Args: ctx: the run (its directory receives the artifacts; ``ctx.applied_task`` is the
        task whose allocation this is, the source of the application's default data); model: the
        base model, changed in place or wrapped; allocation: one value per layer. Returns the model
        to evaluate."""


@runtime_checkable
class Evaluator(Protocol):
    """Metrics of a model, e.g. perplexity or lm-eval task accuracies."""

    def evaluate(self, ctx: RunContext, model: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        """Args: ctx: the run; model: the model to measure (in memory); tokenizer: its tokenizer.
        Returns metric name → value."""
