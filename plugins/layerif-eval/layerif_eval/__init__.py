"""layerif evaluators: perplexity over text and lm-evaluation-harness tasks on in-memory models.

>>> from layerif_eval import evaluate_model
>>> report = evaluate_model(ctx)   # runs ctx.config.evaluation; writes metrics.json and metrics.md
"""

from layerif_core.evaluation import EvalReport, evaluate_model
from layerif_eval.harness import LmEval, LmEvalOptions
from layerif_eval.perplexity import Perplexity, PerplexityOptions

__all__ = ["EvalReport", "LmEval", "LmEvalOptions", "Perplexity", "PerplexityOptions", "evaluate_model"]
