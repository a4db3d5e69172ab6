"""DataInf speed and memory on SmolLM2-135M: with a LoRA adapter (stored per-example gradients) and
on the full attention weights as the LayerIF authors compute it (streamed in Kronecker form).

The paper reports 402.77 s *per layer* for 300 train × 50 validation examples on Mistral-7B (its
code runs one gradient pass per layer). layerif's ``datainf`` collects every block's per-example
LoRA gradients in one batched pass, so its cost should be about one fwd+bwd over the n_train +
n_val examples plus O(n·d) products per tensor. Measured here (``lora``):

- ``floor``: plain forward+backward of the summed loss over train and validation (no hooks);
- ``datainf``: the whole estimator (query pass, per-example pass, all 30 blocks);
- ``one_layer``: the same estimator restricted to block 0's LoRA tensors, i.e. one step of the
  layer-by-layer route; ``layer_by_layer = L × one_layer`` is what that route would cost here, and
  ``L × floor / datainf`` a lower bound of the speed-up that timing noise cannot inflate.

Full mode: 300 × 50 examples (capitals, the paper's sizes); quick mode: 32 × 8. LoRA: rank 8 on
q_proj and v_proj (DataInf's and LayerIF's setting), B initialised at random so no tensor is zero.

``streaming`` is the authors' own setting: the base model (float32, no adapter), DataInf per block
on the full q/k/v/o weights of all 30 blocks (0.88 M parameters per block, 26 M per example), the
mean loss over every token of an example, 300 training × 50 validation WikiText-2 windows of 128
tokens (``pack``: test split for training, validation split for validation; the cost setting of
128-token sequences, which the bundled arithmetic examples are far shorter than), batch size 8.
Stored, the per-example gradients would take 300 × 26 M × 4 bytes = 30 GiB; streamed, the estimator
keeps q and u. Reported: its wall time, the time of one plain forward+backward pass (parameter
gradients on) over the same 350 examples in the same process, their ratio (goal ≤ 5: one
validation and three training passes plus the norms), the time of each of its passes, and the peak
RSS. Agreement with the stored form on blocks 0 and 29 of the first 16 × 4 windows closes it.
Quick mode: 16 × 8 windows of 64 tokens.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch


def _hardware(device: torch.device) -> str:
    """``2-core x86 CPU (AMD EPYC), 1 torch thread(s)`` or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core x86 CPU ({name}), {torch.get_num_threads()} torch thread(s)"


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


def lora(quick: bool) -> dict:
    """DataInf on LoRA r=8 tensors of SmolLM2 (stored per-example gradients) against one layer at
    a time."""
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


def _timed_passes(times: dict[str, float]):
    """``run_pass`` of :mod:`layerif_core.estimators.datainf`, timing each pass by its description."""
    from layerif_core.estimators import datainf

    inner = datainf.run_pass

    def run_pass(ctx, split, description, *args, **kwargs):
        start = time.perf_counter()
        inner(ctx, split, description, *args, **kwargs)
        key = description.split(" (")[0]
        times[key] = times.get(key, 0.0) + time.perf_counter() - start

    return datainf, inner, run_pass


def _plain_pass(ctx, splits) -> None:
    """Forward and backward of each batch's summed loss with parameter gradients (a training pass)."""
    from layerif_core.losses import sequence_losses

    model = ctx.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    for split in splits:
        for batch in split.batches(ctx.batch_size, ctx.pad_id):
            sequence_losses(model, batch.to(ctx.device), reduction=split.reduction).sum().backward()
            model.zero_grad(set_to_none=True)
    for p, flag in flags:
        p.requires_grad_(flag)


def _agreement(ctx, train, query, blocks: list[int]) -> float:
    """``max |I_streamed − I_stored| / max |I_stored|`` over ``blocks`` of ``train``."""
    from layerif_core.estimators.datainf import DataInf, DataInfOptions

    layers = ctx.layer_map.layers
    ctx.layer_map.layers = [mods if k in blocks else [] for k, mods in enumerate(layers)]
    try:
        stored = DataInf(DataInfOptions(mode="stored")).influence(ctx, train, query).double()
        streamed = DataInf(DataInfOptions(mode="streaming")).influence(ctx, train, query).double()
    finally:
        ctx.layer_map.layers = layers
    return float((streamed - stored).abs().max() / stored.abs().max())


def streaming(quick: bool) -> dict:
    """Streamed DataInf on SmolLM2's full attention weights at the LayerIF authors' sizes."""
    from benchmarks.bench_estimators import PeakMemory
    from layerif_core.config import ModelSpec, RunConfig
    from layerif_core.estimators.datainf import DataInf, DataInfOptions, gradient_bytes
    from layerif_core.models import load_model
    from layerif_core.pipeline import load_task_splits, open_run

    n_train, n_val, length = (16, 8, 64) if quick else (300, 50, 128)
    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    out = Path(tempfile.mkdtemp(prefix="bench-datainf-stream-"))
    text = {"source": "bundled:wikitext2", "max_length": length, "pack": True}
    cfg = RunConfig.model_validate({
        "name": "bench-stream", "output_dir": str(out), "batch_size": 8,
        "layers": {"modules": "attention"},
        "scorer": {"estimator": {"name": "datainf"}, "loss": {"tokens": "all", "reduction": "mean"}},
        "tasks": [{"name": "wikitext2", "train": {**text, "split": "test", "windows": n_train},
                   "validation": {**text, "split": "validation", "windows": n_val}}]})
    ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
    train, query = load_task_splits(ctx, cfg.tasks[0])
    assert (len(train), len(query)) == (n_train, n_val)
    assert {len(x) for x in train.input_ids + query.input_ids} == {length}
    device = ctx.device
    warm = query.subset(list(range(2)))
    _plain_pass(ctx, [warm])
    DataInf(DataInfOptions(mode="streaming")).influence(ctx, warm, warm)

    plain_s, plain_mb = _timed(lambda: _plain_pass(ctx, [train, query]), device)
    print({"plain_pass_s": round(plain_s, 1)}, flush=True)
    passes: dict[str, float] = {}
    module, inner, timed_run_pass = _timed_passes(passes)
    module.run_pass = timed_run_pass
    result: dict = {}
    try:
        with PeakMemory(device) as mem:
            stream_s, stream_mb = _timed(lambda: result.update(
                I=DataInf(DataInfOptions(mode="streaming")).influence(ctx, train, query)), device)
    finally:
        module.run_pass = inner
    influence = result["I"]
    record = ctx.run_dir.manifest["datainf"][train.name]
    print({"streaming_s": round(stream_s, 1), "passes": passes}, flush=True)
    k, m = min(16, n_train), min(4, n_val)
    rel = _agreement(ctx, train.subset(list(range(k))), query.subset(list(range(m))),
                     [0, len(ctx.layer_map) - 1])
    params = sum(tm.d_out * (tm.d_in + int(tm.has_bias)) for tm in ctx.layer_map.modules())
    rows = [
        {"setting": "full attention, streamed", "what": "plain fwd+bwd (train + val, parameter "
         "gradients on)", "seconds": round(plain_s, 1), "x_reference": 1.0, "peak_gpu_mb": plain_mb},
        {"setting": "full attention, streamed", "what": "streaming datainf, all 30 blocks",
         "seconds": round(stream_s, 1), "x_reference": round(stream_s / plain_s, 2),
         "peak_gpu_mb": stream_mb},
    ] + [{"setting": "full attention, streamed", "what": f"  of which {name}", "seconds": round(t, 1),
          "x_reference": round(t / plain_s, 2), "peak_gpu_mb": None} for name, t in passes.items()]
    return {
        "model": "SmolLM2-135M-Instruct, float32, q/k/v/o of every block (no adapter)",
        "data": f"WikiText-2 windows of {length} tokens (train: test split, validation: validation "
                "split), loss: mean over all tokens", "device": str(device),
        "hardware": _hardware(device),
        "torch_threads": torch.get_num_threads(), "n_train": n_train, "n_val": n_val,
        "seq_len": length, "batch_size": 8, "layers": len(ctx.layer_map),
        "tracked_parameters": params, "table": rows,
        "x_plain_pass": round(stream_s / plain_s, 2), "goal": "x_plain_pass <= 5",
        "peak_rss_mb_during_streaming": round(getattr(mem, "top", float("nan")) / 2**20, 1),
        "rss_before_streaming_mb": round(getattr(mem, "base", float("nan")) / 2**20, 1),
        "rss_increase_mb": round(mem.peak, 1),
        "stored_gradients_would_take_gb": round(gradient_bytes(ctx, n_train) / 2**30, 1),
        "q_and_u_gb": round(8 * params / 2**30, 3), "norm_branches": record["norm_branches"],
        "partitions": record["plan"]["P"], "finite": bool(torch.isfinite(influence).all()),
        f"stored_vs_streamed_max_rel_diff_blocks_0_29_{k}x{m}": float(f"{rel:.3g}"),
    }


def run(quick: bool) -> dict:
    """LoRA first (its peak RSS, the process maximum, is then its own), then the streamed full
    attention weights (peak RSS sampled during the call)."""
    result = lora(quick)
    stream = streaming(quick)
    result["table"] = [{"setting": "LoRA r=8, stored", **{("x_reference" if k == "x_floor" else k): v
                                                          for k, v in row.items()}}
                       for row in result["table"]] + stream.pop("table")
    result["streaming"] = stream
    return result
