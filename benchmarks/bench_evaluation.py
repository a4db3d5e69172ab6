"""Evaluation plugin: WikiText-2 perplexity of SmolLM2-135M (the pruning literature's protocol) and
the bundled multiple-choice tasks through lm-eval, with throughput and peak memory.

Quick mode: 4 windows of 256 tokens, 10 items per task. Full mode: windows of 2048 tokens over the
whole WikiText-2 test split on a GPU (non-overlapping, and strided with stride 512; the first 8
windows only on a CPU), 100 items per task.
"""

from __future__ import annotations

import resource
import time
from types import SimpleNamespace

import torch


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ctx(batch_size: int) -> SimpleNamespace:
    """What the evaluators read from a run context, without a run directory."""
    return SimpleNamespace(seed=0, batch_size=batch_size)


def run(quick: bool) -> dict:
    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model
    from layerif_eval.harness import LmEval, LmEvalOptions
    from layerif_eval.perplexity import Perplexity, PerplexityOptions

    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    device = next(model.parameters()).device
    rows = []
    cuda = device.type == "cuda"
    if quick:
        settings = [dict(seqlen=256, max_windows=4)]
    else:  # the whole split needs a GPU: one 2048-token window takes about a minute on 2 CPU cores
        settings = [dict(seqlen=2048, max_windows=None if cuda else 8)]
        settings += [dict(seqlen=2048, stride=512)] if cuda else []
    for s in settings:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ev = Perplexity(PerplexityOptions(source="bundled:wikitext2", split="test", name="test", **s))
        start = time.perf_counter()
        m = ev.evaluate(_ctx(1), model, tokenizer)
        seconds = time.perf_counter() - start
        tokens = m["perplexity/test/tokens"]
        rows.append({"what": f"wikitext-2 test ppl, seqlen {s['seqlen']}, stride "
                             f"{s.get('stride', s['seqlen'])}", "value": m["perplexity/test"],
                     "windows": int(m["perplexity/test/windows"]), "tokens": int(tokens),
                     "seconds": round(seconds, 2),
                     "tokens_per_s": round(tokens / seconds, 1), "peak_mb": round(_peak_mb(device), 1)})
    limit = 10 if quick else 100
    ev = LmEval(LmEvalOptions(tasks=["layerif_bundled"], limit=limit, batch_size=16))
    start = time.perf_counter()
    m = ev.evaluate(_ctx(16), model, tokenizer)
    seconds = time.perf_counter() - start
    for task in ("arithmetic", "capitals", "antonyms"):
        rows.append({"what": f"layerif_{task} acc ({limit} items, 4 choices)",
                     "value": m[f"lm_eval/layerif_{task}/acc"], "windows": "", "tokens": "", "seconds": "",
                     "tokens_per_s": "", "peak_mb": ""})
    return {"table": rows, "lm_eval_seconds": round(seconds, 2),
            "lm_eval_requests_per_s": round(3 * limit * 4 / seconds, 1), "device": str(device)}
