"""Memory under load: RSS of one process across 20 tiny ``layerif`` runs (docs/reliability.md).

Each run is the whole job through the Python API (``load_config`` → ``pipeline.run``): the model is
loaded from disk (a tiny random Llama saved with ``save_pretrained``), EK-FAC factors are fitted,
influences and scores computed, a sparsity allocation written, each in a fresh run directory. A
process that keeps anything per run (models, factors, hooks, registry entries, open files, locks)
grows from run to run; RSS is read after a ``gc.collect()`` at the end of every run.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import psutil
import torch


def _tiny_model(path: Path) -> None:
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = ["<pad>", "<eos>", "<unk>"] + list(string.ascii_letters + string.digits + " .,?!'\n:-")
    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)


def _config(model: Path, out: Path, i: int) -> dict:
    train = {"source": "bundled:capitals", "limit": 16, "max_length": 96}
    return {
        "name": f"run{i:02d}", "output_dir": str(out), "seed": i,
        "model": {"source": str(model), "device": "cpu", "dtype": "float32"},
        "tasks": [{"name": "caps", "train": train,
                   "validation": {**train, "split": "validation", "limit": 4}}],
        "scorer": {"name": "layerif", "estimator": {"name": "ekfac"}, "aggregator": {"name": "net_sum"}},
        "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}},
        "batch_size": 4,
    }


def run(quick: bool = False) -> dict:
    from layerif_core.config import load_config
    from layerif_core.pipeline import run as run_pipeline

    n = 8 if quick else 20
    proc = psutil.Process()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _tiny_model(tmp / "tiny")
        start_rss = proc.memory_info().rss
        for i in range(n):
            t0 = time.perf_counter()
            run_pipeline(load_config(data=_config(tmp / "tiny", tmp / "runs", i)), show_progress=False)
            gc.collect()
            rows.append({"run": i + 1, "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                         "seconds": round(time.perf_counter() - t0, 2), "open_files": len(proc.open_files())})
    rss = [r["rss_mb"] for r in rows]
    later = rss[len(rss) // 4:]  # after warm-up (first imports, allocator pools)
    slope = float(torch.tensor(later).double().diff().mean()) if len(later) > 1 else 0.0
    return {
        "table": rows,
        "runs": n,
        "rss_before_mb": round(start_rss / 2**20, 1),
        "rss_after_first_mb": rss[0],
        "rss_after_last_mb": rss[-1],
        "growth_after_warmup_mb_per_run": round(slope, 3),
        "open_files_last": rows[-1]["open_files"],
        "model": "tiny Llama (4 layers, hidden 64), EK-FAC on 16 train / 4 validation examples",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=False), indent=2))
