"""Registration of the ``perplexity`` and ``lm_eval`` evaluators and the ``layerif eval`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl
from layerif_eval.harness import LmEval, LmEvalOptions
from layerif_eval.perplexity import Perplexity, PerplexityOptions


@hookimpl
def layerif_register_evaluators(registry) -> None:
    registry.add("evaluator", "perplexity", Perplexity, config=PerplexityOptions,
                 help="Token-level perplexity over a text file or dataset split (sliding windows).")
    registry.add("evaluator", "lm_eval", LmEval, config=LmEvalOptions,
                 help="lm-evaluation-harness tasks on the in-memory model (HFLM), local tasks offline.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_eval.command import register

    register(app)
