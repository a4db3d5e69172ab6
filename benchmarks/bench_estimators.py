"""Influence estimators: wall time and peak memory against the floor of plain forward+backward passes.

For each estimator the floor is the time of the same number of plain forward+backward passes
(parameter gradients on, as in training) measured in the same run: EK-FAC does 2 fit passes and one
score pass over train plus one query pass, so its floor is ``3 × train + 1 × query``; K-FAC and
``exact`` ``2 × train + query``; ``grad_dot``/``grad_cosine`` ``train + query``. Peak memory is the
increase of the process RSS (CPU, sampled) or of ``torch.cuda.max_memory_allocated`` (GPU) over the
value before the call, for the whole run and for the query + score passes alone (curvature already
fitted); the plain forward+backward of one train pass is measured the same way.
The PyPI package ``kronfluence`` is run as a reference when it is importable.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from layerif_core.artifacts import RunDir
from layerif_core.config import ModelSpec, RunConfig
from layerif_core.losses import sequence_losses
from layerif_core.models import load_model
from layerif_core.pipeline import load_task_splits, open_run
from layerif_core.registry import get_registry

PASSES = {"grad_dot": 1, "grad_cosine": 1, "kfac": 2, "ekfac": 3, "exact": 2}  # train passes


class PeakMemory:
    """Peak memory increase (MiB) during a block: CUDA allocator on GPU, sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        proc = psutil.Process()
        self.base, self.top, self.stop = proc.memory_info().rss, proc.memory_info().rss, False

        def sample() -> None:
            while not self.stop:
                self.top = max(self.top, proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            return
        self.stop = True
        self.thread.join()
        self.peak = (self.top - self.base) / 2**20


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, mem.peak, out


def plain_pass(ctx, split) -> None:
    """Forward and backward of the summed loss with parameter gradients, batch by batch."""
    model = ctx.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    for batch in split.batches(ctx.batch_size, ctx.pad_id):
        sequence_losses(model, batch.to(ctx.device)).sum().backward()
        model.zero_grad(set_to_none=True)
    for p, flag in flags:
        p.requires_grad_(flag)


def bench_model(label: str, model, tokenizer, n_train: int, n_query: int, estimators: dict[str, dict],
                layers: dict, batch_size: int, workdir: Path) -> list[dict]:
    cfg = RunConfig.model_validate({
        "name": label, "output_dir": str(workdir), "batch_size": batch_size, "layers": layers,
        "tasks": [{"name": "capitals",
                   "train": {"source": "bundled:capitals", "limit": n_train, "max_length": 128},
                   "validation": {"source": "bundled:capitals", "split": "validation",
                                  "limit": n_query, "max_length": 128}}]})
    ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
    train, query = load_task_splits(ctx, cfg.tasks[0])
    device = ctx.device
    plain_pass(ctx, train)  # warm-up
    t_train, m_train, _ = timed(device, lambda: plain_pass(ctx, train))
    t_query, _, _ = timed(device, lambda: plain_pass(ctx, query))
    rows = []
    reg = get_registry()
    for name, opts in estimators.items():
        ctx.run_dir = RunDir(workdir / label / name)  # fresh: nothing reused
        est = reg.build("estimator", name, opts)

        fit_seconds, fit_peak, _ = timed(device, lambda est=est: est.fit(ctx, train))
        score_seconds, score_peak, influence = timed(device, lambda est=est: est.influence(ctx, train, query))
        seconds, peak = fit_seconds + score_seconds, max(fit_peak, score_peak)
        if name == "lissa":
            bs = min(opts.get("batch_size") or batch_size, len(train))
            train_passes = 2 + (opts.get("depth", 500) + opts.get("power_iterations", 20)) * bs / len(train)
        else:
            train_passes = PASSES[name]
        floor = train_passes * t_train + t_query
        rows.append({"model": label, "estimator": name, "n_train": len(train), "n_query": len(query),
                     "seconds": round(seconds, 3), "floor_seconds": round(floor, 3),
                     "ratio": round(seconds / floor, 2), "peak_mib": round(peak, 1),
                     "score_peak_mib": round(score_peak, 1),
                     "plain_fb_peak_mib": round(m_train, 1),
                     "finite": bool(torch.isfinite(influence).all())})
        print(rows[-1], flush=True)
    return rows


def kronfluence_reference() -> dict:
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        return {"available": False, "note": "kronfluence not importable (pip install kronfluence, "
                                            "needs torchvision); comparison not run"}
    return {"available": True, "note": "installed, but the comparison harness is not written yet"}


def run(quick: bool) -> dict:
    import transformers as tf

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    smol, tok = load_model(ModelSpec(source="embedded:smollm2-135m", device=device, dtype="float32"))
    tiny_cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    tiny = tf.AutoModelForCausalLM.from_config(tiny_cfg, dtype=torch.float32).to(device).eval()
    cheap = {"grad_dot": {}, "grad_cosine": {}, "kfac": {}, "ekfac": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows += bench_model(
            "tiny-llama", tiny, tok, 16 if quick else 64, 4 if quick else 16,
            {**cheap, "exact": {}, "lissa": {"depth": 10 if quick else 100, "power_iterations": 5}},
            {"modules": "attention"}, 8, work)
        rows += bench_model(
            "smollm2-135m", smol, tok, 16 if quick else 128, 4 if quick else 32, cheap,
            {"regex": "o_proj"} if quick else {"modules": "all"}, 8, work)
    ek = [r for r in rows if r["estimator"] == "ekfac" and r["model"] == "smollm2-135m"]
    return {"table": rows, "kronfluence": kronfluence_reference(), "device": device,
            "goal": "ekfac ratio <= 1.5 on smollm2-135m",
            "ekfac_smollm2_ratio": ek[0]["ratio"] if ek else None}
