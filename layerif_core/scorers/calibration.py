"""Calibration data of the data-driven baseline scorers (OWL, block influence, gradient norm).

By default a scorer uses one split of the task it scores (OWL and block influence: ``train``, as
calibration text; gradient norm: ``validation``); the option ``data`` points at any other
:class:`~layerif_core.config.DataSpec` instead, and ``limit`` keeps only the first examples.
"""

from __future__ import annotations

from typing import Literal

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit, tokenize_split
from layerif_core.models import max_context
from layerif_core.scorers.options import CalibrationOptions
from layerif_core.splits import load_task_splits


def calibration_split(ctx: RunContext, task: TaskSpec, options: CalibrationOptions,
                      default: Literal["train", "validation"]) -> TokenizedSplit:
    """The tokenised calibration examples: ``options.data`` if given, else the task's ``default``
    split (loaded through :func:`~layerif_core.splits.load_task_splits`, so it is recorded in the
    manifest like any task split)."""
    if options.data is not None:
        split = tokenize_split(options.data, ctx.tokenizer, ctx.seed, f"{task.name}/calibration",
                               max_context(ctx.model))
    else:
        train, validation = load_task_splits(ctx, task)
        split = train if default == "train" else validation
    if options.limit is not None and options.limit < len(split):
        split = split.subset(list(range(options.limit)))
    return split
