"""layerif evaluators: perplexity over text and lm-evaluation-harness tasks on in-memory models.

>>> from layerif_eval import evaluate_model
>>> report = evaluate_model(ctx)   # runs ctx.config.evaluation; writes metrics.json and metrics.md
"""

from __future__ import annotations

from layerif_core.lazy import lazy_exports

_EXPORTS = {
    "EvalReport": "layerif_core.evaluation",
    "evaluate_model": "layerif_core.evaluation",
    "LmEval": "layerif_eval.harness",
    "LmEvalOptions": "layerif_eval.options",
    "PaperAccuracy": "layerif_eval.paper",
    "PaperTaskOptions": "layerif_eval.options",
    "Perplexity": "layerif_eval.perplexity",
    "PerplexityOptions": "layerif_eval.options",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
