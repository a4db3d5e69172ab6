"""What LoRA-MoE training costs (``layerif study --plan``), from shapes and options alone.

Training: optimizer steps × micro-batches × sequences × tokens, each a forward and an input-gradient
backward of the frozen base model (the experts' rank-r products are small against it), plus the
validation passes (forward only). Peak memory: the weights, one micro-batch's activations kept for
the backward, and the experts in float32 with their gradients and AdamW's two moments (16 bytes a
parameter; ``top_k`` experts of every target module counted per layer as a floor).
"""

from __future__ import annotations

import math

from torch import nn

from layerif_core.cost import Cost, pass_flops
from layerif_core.estimates import Workload, split_size
from layerif_lora_moe.config import LoraMoeOptions


def estimate(opts: LoraMoeOptions, work: Workload) -> Cost:
    cfg = work.config
    n_train, seq, note = split_size(opts.train or work.task.train, cfg.seed)
    n_val, seq_val, _ = split_size(opts.validation or work.task.validation, cfg.seed)
    batch = opts.batch_size or cfg.batch_size
    per_step = batch * opts.grad_accum
    steps = opts.max_steps or math.ceil(opts.epochs * n_train / per_step)
    evals = 2 + (steps // opts.eval_every if opts.eval_every else 0)
    train = pass_flops(work.model, steps * per_step, seq)
    val = evals * pass_flops(work.model, n_val, seq_val) / 2
    wanted = set(opts.target_modules)
    lora = sum(opts.rank * (m.in_features + m.out_features) for name, m in work.model.named_modules()
               if name.rsplit(".", 1)[-1] in wanted and isinstance(m, nn.Linear)) * opts.top_k
    peak = work.weights() + work.activations(batch, seq, backward=True) + 16 * lora
    return Cost({"training": train, "validation": val}, peak_bytes=peak, note=note)
