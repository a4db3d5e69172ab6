"""Registration of the ``perplexity``, ``lm_eval`` and ``paper_tasks`` evaluators and the
``layerif eval`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl


@hookimpl
def layerif_register_evaluators(register) -> None:
    register("perplexity", "layerif_eval.perplexity:Perplexity",
             options="layerif_eval.options:PerplexityOptions",
             seeded="layerif_eval.options:perplexity_uses_seed",
             help="Token-level perplexity over a text file or dataset split (sliding windows).")
    register("lm_eval", "layerif_eval.harness:LmEval", options="layerif_eval.options:LmEvalOptions",
             help="lm-evaluation-harness tasks on the in-memory model (HFLM), local tasks offline.")
    register("paper_tasks", "layerif_eval.paper:PaperAccuracy",
             options="layerif_eval.options:PaperTaskOptions",
             help="The LayerIF paper's tasks (paper:<task>): greedy generation, the authors' answer "
                  "extraction, exact-match accuracy in percent.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_eval.command import register

    register(app)
