"""Early stopping on a held-out part of the training split: train until the held-out loss stops falling.

A fraction ``holdout`` of the training examples is set aside before training (whole groups of equal
examples, so no held-out sequence is also trained on) and the rest is trained on. Every
``eval_every`` optimizer steps (and at step 0) the mean token loss of the held-out part is measured;
an evaluation improves when ``loss < best − min_delta``. Training stops after ``patience``
evaluations in a row without an improvement, or at the step limit (``max_steps``/``epochs``), and
the weights of the best evaluation are put back (Prechelt 1998, "Early stopping — but when?"; the
rule of Keras' ``EarlyStopping(patience, min_delta, restore_best_weights=True)``).

Torch-free: options modules import :class:`EarlyStopping` without torch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from layerif_core.errors import DataError

if TYPE_CHECKING:
    from layerif_core.data import TokenizedSplit


class EarlyStopping(BaseModel):
    """Options of early stopping (a section of a training application's options)."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(3, ge=1, description="Evaluations in a row without an improvement after "
                          "which training stops.")
    eval_every: int = Field(10, ge=1, description="Optimizer steps between two evaluations of the "
                            "held-out loss (also evaluated at step 0 and at the last step).")
    min_delta: float = Field(0.0, ge=0, description="An evaluation improves when its loss is below "
                             "the best so far minus min_delta.")
    holdout: float = Field(0.1, gt=0, lt=1, description="Fraction of the training split held out for "
                           "the stopping loss (not trained on).")


def holdout_split(split: TokenizedSplit, fraction: float, seed: int
                  ) -> tuple[TokenizedSplit, TokenizedSplit]:
    """``split`` as (examples to train on, held-out examples): ``ceil(fraction · n)`` examples held
    out, drawn by ``seed`` as whole groups of identical token sequences (the held-out part may
    exceed the count by the last group's copies), so the two parts share no sequence."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(split.input_ids):
        groups.setdefault(tuple(ids), []).append(i)
    keys = list(groups)
    random.Random(f"holdout|{seed}").shuffle(keys)
    want, held = math.ceil(fraction * len(split)), []
    for key in keys:
        if len(held) >= want:
            break
        held += groups[key]
    kept = sorted(set(range(len(split))) - set(held))
    if not kept:
        raise DataError(f"holding out {fraction:g} of the {len(split)} training examples leaves none "
                        f"({len(groups)} distinct) to train on; lower early_stopping.holdout or give "
                        "more training data.")
    return split.subset(kept), split.subset(sorted(held))


@dataclass
class Stopper:
    """The stopping rule's state: the held-out curve, the best evaluation and the count since it."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = 0
    bad: int = 0
    stopped: bool = False
    curve: list[list[float]] = field(default_factory=list)  # [[step, held-out loss], ...]

    @classmethod
    def of(cls, opts: EarlyStopping) -> Stopper:
        return cls(opts.patience, opts.min_delta)

    def update(self, step: int, loss: float) -> bool:
        """Record the held-out ``loss`` after ``step`` steps; True when it is the new best."""
        self.curve.append([float(step), float(loss)])
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = float(loss), step, 0
            return True
        self.bad += 1
        self.stopped = self.bad >= self.patience
        return False

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad,
                "stopped": self.stopped, "curve": self.curve}

    def restore(self, data: dict[str, Any]) -> None:
        """Take the state written by :meth:`to_json` (a resumed run)."""
        self.best, self.best_step = float(data["best"]), int(data["best_step"])
        self.bad, self.stopped = int(data["bad"]), bool(data["stopped"])
        self.curve = [list(p) for p in data["curve"]]
