"""``layerif``: per-layer influence from an estimator, aggregated into one score per layer.

``I[l, i]`` (framework sign, positive = helpful) is computed by the configured estimator plugin and
saved in ``influence.safetensors`` under the task's name; the aggregator (``helpful_sum`` by default,
the paper's "+VE" score ``S[l] = Σ_i max(I[l, i], 0)``) turns it into ``S[l]``. ``scores.json``
records which side the aggregator summed, the share of helpful and harmful influences, and the
helpful and harmful mass of every layer (``Σ_i max(±I[l, i], 0)``), whatever the aggregator.
"""

from __future__ import annotations

import hashlib
import json
import logging

from layerif_core.aggregators import HarmfulSum, HelpfulSum
from layerif_core.config import RunConfig, ScorerSpec, TaskSpec
from layerif_core.context import RunContext
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores
from layerif_core.seeds import adapter_uses_seed, data_uses_seed
from layerif_core.splits import load_task_splits

log = logging.getLogger("layerif")


INFLUENCE_FILE = "influence.safetensors"  # per task: its influence matrix I[l, i], cached in the run

def influence_fingerprint(ctx: RunContext, task: TaskSpec, train_fp: str, query_fp: str) -> str:
    spec = ctx.config.scorer.estimator.model_dump()
    key = [ctx.model_fingerprint, ctx.config.layers.model_dump(), train_fp, query_fp, spec,
           ctx.config.seed]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def uses_seed(spec: ScorerSpec, config: RunConfig | None) -> bool:
    """Whether LayerIF scores change with the run's seed (its registry declaration): when its
    estimator says so (a true Fisher's sampled labels, LiSSA's sampled batches), when the task data
    are drawn with the seed, or when they go through an adapter fine-tuned with it
    (:mod:`layerif_core.seeds`). Without the run's config: seeded."""
    if get_registry().uses_seed("estimator", spec.estimator, config):
        return True
    return config is None or data_uses_seed(config) or adapter_uses_seed(config)


class LayerIFScorer:
    """Influence-based layer scores: estimator → ``I[L, N]`` → aggregator → ``S[L]``."""

    def score(self, ctx: RunContext, task: TaskSpec) -> LayerScores:
        registry = get_registry()
        est_spec, agg_spec = ctx.config.scorer.estimator, ctx.config.scorer.aggregator
        estimator = registry.build("estimator", est_spec.name, est_spec.options)
        aggregator = registry.build("aggregator", agg_spec.name, agg_spec.options)
        train, query = load_task_splits(ctx, task)
        fingerprint = influence_fingerprint(ctx, task, train.fingerprint, query.fingerprint)

        def compute():
            estimator.fit(ctx, train)
            return estimator.influence(ctx, train, query).float().cpu()

        influence = ctx.run_dir.cached_entry(INFLUENCE_FILE, task.name, fingerprint, compute)
        values = aggregator(influence)
        side = getattr(aggregator, "side", None)
        helpful, harmful = (float(x.float().mean()) for x in (influence > 0, influence < 0))
        _warn_empty_side(task.name, agg_spec.name, side, values, helpful, harmful)
        masses = {f"{name}_mass": [float(x) for x in agg(influence).tolist()]
                  for name, agg in (("helpful", HelpfulSum()), ("harmful", HarmfulSum()))}
        return LayerScores(values, aggregator.higher_is_better, "layerif", {
            "estimator": est_spec.name, "aggregator": agg_spec.name, "side": side,
            "loss": ctx.config.scorer.loss.model_dump(),
            "n_train": len(train), "n_query": len(query), "influence_fingerprint": fingerprint,
            "helpful_fraction": round(helpful, 4), "harmful_fraction": round(harmful, 4), **masses,
        })


def _warn_empty_side(task: str, aggregator: str, side: str | None, values, helpful: float,
                     harmful: float) -> None:
    """Warn when what the aggregator sums is empty (or the scores are constant): it ranks no layer."""
    share = {"helpful": helpful, "harmful": harmful}.get(side or "")
    if share == 0:
        log.warning("task '%s': no influence is %s through any layer, so %s is 0 everywhere, ranks no "
                    "layer and the allocation will be uniform; check the data (train and validation "
                    "examples, loss tokens) or use another aggregator.", task, side, aggregator)
    elif values.numel() > 1 and bool((values == values[0]).all()):
        log.warning("task '%s': %s is %g in every layer, so it ranks no layer and the allocation "
                    "will be uniform.", task, aggregator, float(values[0]))
