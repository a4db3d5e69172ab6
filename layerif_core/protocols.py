"""The shapes every component implements (architecture §3).

Protocols are runtime-checkable so the registry and tests can check a plugin's object, but any class
with these methods works; nothing needs to inherit from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from layerif_core.context import RunContext
    from layerif_core.data import TokenizedSplit


@dataclass
class LayerScores:
    """One score per decoder layer, with the direction that makes it comparable.

    ``higher_is_better`` says whether a higher score marks a *better trained* layer. LayerIF's
    ``positive_sum`` (total harmful influence) is ``False``: a low S marks a mature layer.
    """

    values: torch.Tensor  # [L] float32
    higher_is_better: bool
    scorer: str
    details: dict[str, Any] = field(default_factory=dict)

    def worseness(self) -> torch.Tensor:
        """Scores oriented so that larger means worse trained (what allocators consume)."""
        v = self.values.double()
        return -v if self.higher_is_better else v

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "higher_is_better": self.higher_is_better,
            "values": [float(x) for x in self.values.tolist()],
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerScores:
        return cls(
            values=torch.tensor(data["values"], dtype=torch.float32),
            higher_is_better=bool(data["higher_is_better"]),
            scorer=str(data["scorer"]),
            details=dict(data.get("details", {})),
        )


@dataclass
class Allocation:
    """A per-layer budget: sparsity (fraction in [0, 1)) or experts (integer >= 1) per layer."""

    kind: str  # "sparsity" | "experts"
    values: list[float]
    allocator: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "allocator": self.allocator, "values": self.values,
                "details": self.details}


@runtime_checkable
class Estimator(Protocol):
    """Per-layer influence ``I[l, i] = (q^l)ᵀ (G_l + λ_l I)^{-1} g_i^l`` (architecture §4)."""

    def fit(self, ctx: RunContext, train: TokenizedSplit) -> None:
        """Fit and persist curvature state on the training split (a no-op for ``grad_dot``)."""

    def influence(self, ctx: RunContext, train: TokenizedSplit, query: TokenizedSplit) -> torch.Tensor:
        """Return ``I`` as float32 ``[L, N_train]``: influence on the summed query loss."""


@runtime_checkable
class Aggregator(Protocol):
    """Influence matrix ``[L, N]`` to layer scores ``[L]``."""

    higher_is_better: bool

    def __call__(self, influence: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores layers: influence-based or a model-only baseline."""

    def score(self, ctx: RunContext, task: Any) -> LayerScores: ...


@runtime_checkable
class Allocator(Protocol):
    """Layer scores to an exact per-layer allocation; the budget (target sparsity, total experts)
    is part of the allocator's options. ``weights`` are the layers' parameter counts, for
    parameter-weighted budgets."""

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation: ...


@runtime_checkable
class Application(Protocol):
    """Turns an allocation into a changed model (pruned, LoRA-MoE trained), writing artifacts."""

    def apply(self, ctx: RunContext, model: torch.nn.Module, allocation: Allocation
              ) -> torch.nn.Module: ...


@runtime_checkable
class Evaluator(Protocol):
    """Metrics of a model, e.g. perplexity or lm-eval task accuracies."""

    def evaluate(self, ctx: RunContext, model: torch.nn.Module, tokenizer: Any
                 ) -> dict[str, float]: ...
