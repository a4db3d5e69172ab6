"""What the LoRA-ranks application costs (``layerif study --plan``): nothing but the allocation
unless it fine-tunes, then the ``finetune`` section's epochs over the task's training split (a
forward and an input-gradient backward of the frozen model per token)."""

from __future__ import annotations

from layerif_core.cost import Cost, pass_flops
from layerif_core.estimates import Workload, split_size


def estimate(train: bool, work: Workload) -> Cost:
    if not train:
        return Cost(peak_bytes=work.weights())
    ft = work.config.finetune
    n, seq, note = split_size(work.task.train, work.config.seed)
    peak = work.weights() + work.activations(ft.batch_size, seq, backward=True)
    return Cost({"training": ft.epochs * pass_flops(work.model, n, seq)}, peak_bytes=peak, note=note)
