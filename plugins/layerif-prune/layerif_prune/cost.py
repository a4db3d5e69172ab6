"""What pruning costs (``layerif study --plan``), from shapes and options alone.

Wanda and SparseGPT run the calibration windows block by block through the model (one forward of
``samples × seqlen`` tokens in all); per module Wanda scores ``|W|·‖X‖`` and sorts each row
(``d_out d_in log₂ d_in`` comparisons, counted as float32 work); SparseGPT accumulates the Hessian
``2 X Xᵀ`` (``2 d_in² T``), inverts it by Cholesky (about ``d_in³``) and updates the weights column
block by column block (``2 d_out d_in²``). Peak memory: the weights, the calibration activations
entering and leaving a block, and (SparseGPT) the Hessians of one block in float32.
"""

from __future__ import annotations

import math

from layerif_core.cost import DTYPE_BYTES, Cost, pass_flops
from layerif_core.estimates import Workload, split_size
from layerif_core.scope import application_layers
from layerif_prune.options import PruneOptions


def estimate(opts: PruneOptions, work: Workload) -> Cost:
    from layerif_core.layers import LayerMap

    modules = LayerMap(work.model, application_layers(work.config.layers)).modules()
    sort = sum(tm.d_out * tm.d_in * math.log2(max(tm.d_in, 2)) for tm in modules)
    if opts.pruner == "magnitude":
        return Cost(flops_fp32=sort, peak_bytes=work.weights())
    cal = opts.calibration
    tokens, note = cal.samples * cal.seqlen, ""
    if cal.source is None:
        _, _, note = split_size(work.task.train, work.config.seed)
    hidden = work.model.config.hidden_size
    acts = 2 * tokens * hidden * DTYPE_BYTES[work.dtype]
    cost = Cost({"calibration_forward": pass_flops(work.model, cal.samples, cal.seqlen) / 2},
                flops_fp32=sort, peak_bytes=work.weights() + acts, note=note)
    if opts.pruner == "sparsegpt":
        cost.flops_fp32 = sum(2.0 * tm.d_in**2 * tokens + tm.d_in**3 + 2.0 * tm.d_out * tm.d_in**2
                              for tm in modules)
        per_block: dict[int, int] = {}
        for tm in modules:
            per_block[tm.layer] = per_block.get(tm.layer, 0) + tm.d_in**2 * 4
        cost.peak_bytes += max(per_block.values())
    return cost
