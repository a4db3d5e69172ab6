"""One task's layer scores with the configured scorer: the stage every caller of a scorer shares.

Below the pipeline (architecture §10): a component that needs the scores of another scoring config
(``select`` scores its candidates) calls it here rather than calling up into the orchestrator.
"""

from __future__ import annotations

import time

from layerif_core.allocators.preprocess import postprocess
from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.errors import DataError
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores


def score_task(ctx: RunContext, task: TaskSpec) -> LayerScores:
    """Layer scores of one task with the configured scorer (``config.scorer``), post-processed as
    ``scorer.postprocess`` says.

    Args:
        ctx: the run.
        task: the task to score.
    """
    spec = ctx.config.scorer
    scorer = get_registry().build("scorer", spec.name, spec.options)
    start = time.perf_counter()
    scores = scorer.score(ctx, task)
    if scores.values.shape != (len(ctx.layer_map),):
        raise DataError(f"scorer '{spec.name}' returned {tuple(scores.values.shape)} scores for "
                        f"{len(ctx.layer_map)} layers; fix the scorer plugin.")
    ctx.run_dir.manifest.setdefault("timings", {})[f"score:{task.name}"] = round(
        time.perf_counter() - start, 3)
    return postprocess(scores, spec.postprocess)
