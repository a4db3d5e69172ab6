"""layerif: which layers of a language model are well trained for a task, from data.

The Python API mirrors the CLI step by step::

    from layerif_core import load_config, open_run, compute_layer_scores
    config = load_config("examples/quickstart.yaml", overrides=["tasks.0.train.limit=32"])
    ctx = open_run(config)
    scores = compute_layer_scores(ctx)   # {task: LayerScores}

Names are imported on first use, so ``import layerif_core`` (and the CLI's listing commands) do not
import torch.
"""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl as hookimpl
from layerif_core.lazy import lazy_exports

_EXPORTS = {
    "Allocation": "layerif_core.results",
    "DataSpec": "layerif_core.config",
    "LayerMap": "layerif_core.layers",
    "LayerScores": "layerif_core.results",
    "LayerifError": "layerif_core.errors",
    "ModelSpec": "layerif_core.config",
    "RunConfig": "layerif_core.config",
    "RunContext": "layerif_core.context",
    "TaskSpec": "layerif_core.config",
    "TokenizedSplit": "layerif_core.data",
    "allocate": "layerif_core.pipeline",
    "apply_allocation": "layerif_core.apply",
    "compute_layer_scores": "layerif_core.pipeline",
    "get_registry": "layerif_core.registry",
    "load_config": "layerif_core.config",
    "load_model": "layerif_core.models",
    "load_task_splits": "layerif_core.splits",
    "open_run": "layerif_core.pipeline",
    "read_metrics": "layerif_core.evaluation",
    "run": "layerif_core.pipeline",
    "score_task": "layerif_core.pipeline",
    "tokenize_split": "layerif_core.data",
}

__all__ = sorted([*_EXPORTS, "hookimpl"])

__getattr__ = lazy_exports(__name__, _EXPORTS)
