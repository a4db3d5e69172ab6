"""The values that flow between components: layer scores and allocations (a leaf module: it imports
nothing of layerif, so protocols, artifacts and plugins can all use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerScores:
    """One score per decoder layer, with the direction that makes it comparable.

    ``higher_is_better`` says whether a higher score marks a *better trained* layer. LayerIF's
    Every LayerIF aggregator is ``False``: more influence through a layer marks a less mature one.
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


def rank_with_ties(values: list[float], higher_is_better: bool) -> list[int]:
    """Rank 1 = best-trained layer; equal scores share the best rank of their group and the next
    rank skips ahead ("competition ranking": 1, 2, 2, 4), so no order is read into a tie."""
    better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    return [1 + sum(better(w, v) for w in values) for v in values]
