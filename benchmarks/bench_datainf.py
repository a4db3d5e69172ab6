"""DataInf speed and memory on SmolLM2-135M with a LoRA adapter (the LayerIF paper's setting).

The paper reports 402.77 s *per layer* for 300 train × 50 validation examples on Mistral-7B (its
code runs one gradient pass per layer). layerif's ``datainf`` collects every block's per-example
LoRA gradients in one batched pass, so its cost should be about one fwd+bwd over the n_train +
n_val examples plus O(n·d) products per tensor. Measured here:

- ``floor``: plain forward+backward of the summed loss over train and validation (no hooks);
- ``datainf``: the whole estimator (query pass, per-example pass, all 30 blocks);
- ``one_layer``: the same estimator restricted to block 0's LoRA tensors, i.e. one step of the
  layer-by-layer route; ``layer_by_layer = L × one_layer`` is what that route would cost here, and
  ``L × floor / datainf`` a lower bound of the speed-up that timing noise cannot inflate.

Full mode: 300 × 50 examples (capitals, the paper's sizes); quick mode: 32 × 8. LoRA: rank 8 on
q_proj and v_proj (DataInf's and LayerIF's setting), B initialised at random so no tensor is zero.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def _floor(ctx, splits) -> None:
    from layerif_core.estimators.capture import frozen_with_input_grad
    from layerif_core.losses import sequence_losses

    with frozen_with_input_grad(ctx.model):
        for split in splits:
            for batch in split.batches(ctx.batch_size, ctx.pad_id):
                sequence_losses(ctx.model, batch.to(ctx.device)).sum().backward()


def _timed(fn, device: torch.device) -> tuple[float, float | None]:
    _reset_peak(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, _peak_mb(device)


def run(quick: bool) -> dict:
    from peft import LoraConfig, get_peft_model

    from layerif_core.config import ModelSpec, RunConfig
    from layerif_core.estimators.datainf import DataInf, gradient_bytes
    from layerif_core.models import load_model
    from layerif_core.pipeline import load_task_splits, open_run

    n_train, n_val = (32, 8) if quick else (300, 50)
    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    out = Path(tempfile.mkdtemp(prefix="bench-datainf-"))
    cfg = RunConfig.model_validate({
        "name": "bench", "output_dir": str(out), "batch_size": 16, "layers": {"lora_only": True},
        "tasks": [{"name": "capitals",
                   "train": {"source": "bundled:capitals", "limit": n_train},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": n_val}}],
    })
    ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
    train, query = load_task_splits(ctx, cfg.tasks[0])
    device = ctx.device
    _floor(ctx, [query])  # warm-up of both code paths
    DataInf().influence(ctx, query, query)

    floor_s, floor_mb = _timed(lambda: _floor(ctx, [train, query]), device)
    rss_before = _peak_rss_mb()
    result: dict = {}
    full_s, full_mb = _timed(lambda: result.update(I=DataInf().influence(ctx, train, query)), device)
    layers = ctx.layer_map.layers
    ctx.layer_map.layers = [layers[0]] + [[] for _ in layers[1:]]
    try:
        one_s, _ = _timed(lambda: DataInf().influence(ctx, train, query), device)
    finally:
        ctx.layer_map.layers = layers
    n_layers = len(layers)
    tokens = sum(len(x) for x in train.input_ids) + sum(len(x) for x in query.input_ids)
    return {
        "model": "SmolLM2-135M-Instruct + LoRA r=8 (q_proj, v_proj)", "device": str(device),
        "n_train": n_train, "n_val": n_val, "tokens": tokens, "layers": n_layers,
        "lora_tensors": len(ctx.layer_map.modules()),
        "per_example_gradients_mb": round(gradient_bytes(ctx, n_train) / 2**20, 1),
        "finite": bool(torch.isfinite(result["I"]).all()),
        "table": [
            {"what": "fwd+bwd floor (train + val)", "seconds": round(floor_s, 2),
             "x_floor": 1.0, "peak_gpu_mb": floor_mb},
            {"what": "datainf, all layers (one pass)", "seconds": round(full_s, 2),
             "x_floor": round(full_s / floor_s, 2), "peak_gpu_mb": full_mb},
            {"what": "datainf, one layer", "seconds": round(one_s, 2),
             "x_floor": round(one_s / floor_s, 2), "peak_gpu_mb": None},
            {"what": f"layer by layer ({n_layers} × one layer)", "seconds": round(n_layers * one_s, 1),
             "x_floor": round(n_layers * one_s / floor_s, 1), "peak_gpu_mb": None},
        ],
        "speedup_vs_layer_by_layer": round(n_layers * one_s / full_s, 1),
        # each per-layer run needs at least one fwd+bwd over all examples: a noise-free lower bound
        "speedup_vs_layer_by_layer_lower_bound": round(n_layers * floor_s / full_s, 1),
        "peak_rss_mb_after_datainf": round(max(_peak_rss_mb(), rss_before), 1),
        "paper_seconds_per_layer_mistral7b_300x50": 402.77,
    }
