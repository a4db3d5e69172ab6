"""``layerif``: per-layer influence from an estimator, aggregated into one score per layer.

``I[l, i]`` (framework sign) is computed by the configured estimator plugin and saved in
``influence.safetensors`` under the task's name; the aggregator (``positive_sum`` by default, the
paper's "+VE" score ``S[l] = Σ_i max(−I[l, i], 0)``) turns it into ``S[l]``.
"""

from __future__ import annotations

import hashlib
import json
import logging

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores

log = logging.getLogger("layerif")


def influence_fingerprint(ctx: RunContext, task: TaskSpec, train_fp: str, query_fp: str) -> str:
    spec = ctx.config.scorer.estimator.model_dump()
    key = [ctx.model_fingerprint, ctx.config.layers.model_dump(), train_fp, query_fp, spec,
           ctx.config.seed]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class LayerIFScorer:
    """Influence-based layer scores: estimator → ``I[L, N]`` → aggregator → ``S[L]``."""

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        from layerif_core.pipeline import load_task_splits

        registry = get_registry()
        est_spec, agg_spec = ctx.config.scorer.estimator, ctx.config.scorer.aggregator
        estimator = registry.build("estimator", est_spec.name, est_spec.options)
        aggregator = registry.build("aggregator", agg_spec.name, agg_spec.options)
        train, query = load_task_splits(ctx, task)
        fingerprint = influence_fingerprint(ctx, task, train.fingerprint, query.fingerprint)

        def compute():
            estimator.fit(ctx, train)
            return estimator.influence(ctx, train, query).float().cpu()

        influence = ctx.run_dir.cached_entry("influence.safetensors", task.name, fingerprint, compute)
        values = aggregator(influence)
        harmful = float((influence < 0).float().mean())
        if values.numel() > 1 and bool((values == values[0]).all()):
            why = (" (no train example is harmful through any layer: train and validation are "
                   "probably the same distribution on a model that fits it)" if harmful == 0 else "")
            log.warning("task '%s': %s is %g in every layer%s, so it ranks no layer and the "
                        "allocation will be uniform; use a train set that differs from the "
                        "validation task, or another aggregator (e.g. 'sum').", task.name,
                        agg_spec.name, float(values[0]), why)
        return LayerScores(values, aggregator.higher_is_better, "layerif", {
            "estimator": est_spec.name, "aggregator": agg_spec.name,
            "n_train": len(train), "n_query": len(query), "influence_fingerprint": fingerprint,
            "harmful_fraction": round(harmful, 4),
        })
