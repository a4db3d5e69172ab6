"""What layer scores depend on, as the keys of the caches that share them.

A study keeps one score file per scoring config under ``shared/scores/<key>.json`` and one scoring
run directory (EK-FAC factors, the influence matrix) per scoring config without its aggregator and
post-processing under ``shared/runs/<key>/``; ``select`` keeps its candidates' scores under the same
keys, so a select arm and a plain arm of one study compute the scores of one scoring config once.
Nothing here imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from layerif_core.config import RunConfig


def key(data: Any) -> str:
    """A short, stable hash of JSON-able ``data`` (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def needs_finetune(cfg: RunConfig) -> bool:
    """Whether the scores go through a LoRA adapter that has to be fine-tuned first."""
    return cfg.layers.lora_only and not cfg.model.adapter


def scores_use_seed(cfg: RunConfig) -> bool:
    """Whether the layer scores of ``cfg`` can change with the run's seed, as the scorer declared
    when it registered (:meth:`~layerif_core.registry.Registry.uses_seed`)."""
    from layerif_core.registry import get_registry

    return get_registry().uses_seed("scorer", cfg.scorer, cfg)


def scoring_config(cfg: RunConfig) -> dict[str, Any]:
    """What the layer scores of ``cfg`` depend on: the model, layers, tasks, scorer (its estimator and
    aggregator only for ``layerif``), batch size, the scoring adapter's fine-tuning where there is
    one, and the seed only where the scores can depend on it."""
    keep = {"model", "layers", "tasks", "scorer", "batch_size", "seed"}
    if needs_finetune(cfg):
        keep.add("finetune")
    data = cfg.model_dump(mode="json", include=keep)
    if cfg.scorer.name != "layerif":  # the estimator and aggregator are the layerif scorer's alone
        data["scorer"].pop("estimator", None)
        data["scorer"].pop("aggregator", None)
    if not scores_use_seed(cfg):
        data["seed"] = 0
    return data


def scores_key(cfg: RunConfig) -> str:
    """The name of the score file of ``cfg`` (``<key>.json``)."""
    return key(scoring_config(cfg))


def scoring_run_key(scoring: dict[str, Any]) -> str:
    """The name of the run directory that computes the scores of ``scoring``
    (:func:`scoring_config`): without the aggregator and post-processing, so that ``I[l, i]`` and
    the curvature factors are shared by LayerIF +VE, TOP-25% and ALL."""
    part = copy.deepcopy(scoring)
    part["scorer"].pop("aggregator", None)
    part["scorer"].pop("postprocess", None)
    return key(part)
