"""layerif: which layers of a language model are well trained for a task, from data.

The Python API mirrors the CLI step by step::

    from layerif_core import load_config, open_run, compute_layer_scores
    config = load_config("examples/quickstart.yaml", overrides=["tasks.0.train.limit=32"])
    ctx = open_run(config)
    scores = compute_layer_scores(ctx)   # {task: LayerScores}
"""

from layerif_core.config import DataSpec, ModelSpec, RunConfig, TaskSpec, load_config
from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit, tokenize_split
from layerif_core.errors import LayerifError
from layerif_core.hookspecs import hookimpl
from layerif_core.layers import LayerMap
from layerif_core.models import load_model
from layerif_core.pipeline import allocate, compute_layer_scores, load_task_splits, open_run, run, score_task
from layerif_core.protocols import Allocation, LayerScores
from layerif_core.registry import get_registry

__all__ = [
    "Allocation", "DataSpec", "LayerMap", "LayerScores", "LayerifError", "ModelSpec", "RunConfig",
    "RunContext", "TaskSpec", "TokenizedSplit", "allocate", "compute_layer_scores", "get_registry",
    "hookimpl", "load_config", "load_model", "load_task_splits", "open_run", "run", "score_task",
    "tokenize_split",
]
