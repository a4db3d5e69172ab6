"""A task's tokenised splits for a run: the data every data-driven scorer and application reads.

Below the pipeline: it needs only the run context, the model's context length
(:func:`~layerif_core.models.max_context`), :func:`~layerif_core.data.tokenize_split` and the
manifest, so scorers and applications load their task's data here without calling up into the
orchestrator that called them (architecture §10).
"""

from __future__ import annotations

import logging

from layerif_core.config import TaskSpec
from layerif_core.context import RunContext
from layerif_core.data import TokenizedSplit, tokenize_split
from layerif_core.models import max_context

log = logging.getLogger("layerif")


def load_task_splits(ctx: RunContext, task: TaskSpec) -> tuple[TokenizedSplit, TokenizedSplit]:
    """Tokenise a task's train and validation splits, recording sizes, truncation and skipped
    examples (no token in the loss) in the manifest.

    Args:
        ctx: the run (its tokenizer, the model's context length, the seed of sampled data).
        task: the task whose ``train`` and ``validation`` data specs are read.

    Returns:
        ``(train, validation)``: the training examples ``i`` of ``I[l, i]`` and the query, with the
        per-example loss of ``scorer.loss`` (its ``tokens`` replace each split's ``loss_on``).
    """
    ctx_len = max_context(ctx.model)
    loss = ctx.config.scorer.loss
    specs = (task.train, task.validation)
    if loss.tokens is not None:
        specs = tuple(s.model_copy(update={"loss_on": loss.tokens}) for s in specs)
    train, query = (tokenize_split(spec, ctx.tokenizer, ctx.seed, f"{task.name}/{part}", ctx_len,
                                   loss.reduction, loss.padding)
                    for spec, part in zip(specs, ("train", "validation"), strict=True))
    if len(train) < ctx.batch_size:
        log.warning("task '%s': %d training examples, fewer than batch_size %d", task.name,
                    len(train), ctx.batch_size)
    data = ctx.run_dir.manifest.setdefault("data", {})
    data[task.name] = {
        split.name: {"examples": len(split), "truncated": split.n_truncated,
                     "skipped": split.n_skipped, "packed": spec.pack,
                     "fingerprint": split.fingerprint, "source": spec.source,
                     "loss": {"tokens": spec.loss_on, "reduction": split.reduction,
                              "padding": loss.padding}}
        for split, spec in zip((train, query), specs, strict=True)
    }
    ctx.run_dir.save_manifest()
    return train, query
