"""Pruning speed and quality on SmolLM2-135M with WikiText-2 (layerif-prune).

Speed: the time of Wanda and SparseGPT pruning (block by block, inputs recomputed through the pruned
blocks) against the time of the calibration forward passes alone (the whole model over the same
windows). Goals: Wanda ≤ 1.5×, SparseGPT ≤ 5×. Full mode uses 128 × 512 calibration tokens (the
issue's size); quick mode 16 × 256.

Quality (the docs' table): a study (``layerif_core.study``: the one place that builds cells and
aggregates them) of WikiText-2 test perplexity of the dense model and of magnitude, Wanda and
SparseGPT at the given sparsities, with uniform, HT-SR (AlphaPruning) and LayerIF allocation
(alpha_pruning, ε = 0.2). Sizes are recorded in the result; ``run(quick=True)`` evaluates fewer
settings on fewer tokens. The paper's whole table is the preset ``examples/studies/pruning.yaml``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch


def _tokens(tokenizer, split: str, chars: int) -> torch.Tensor:
    """The first ``chars`` characters of bundled WikiText-2 ``split`` ('valid' = 'validation')."""
    from layerif_core.tasks import corpus_text

    text = corpus_text("wikitext2", {"valid": "validation"}.get(split, split))[:chars]
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def _forward_seconds(model, windows: torch.Tensor, batch: int) -> float:
    device = next(model.parameters()).device
    start = time.perf_counter()
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch].to(device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _prune(model, pruner: str, sparsities: list[float], windows, batch: int) -> tuple[object, float]:
    from layerif_core.layers import LayerMap
    from layerif_prune.options import PruneOptions
    from layerif_prune.sequential import prune_blocks

    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    prune_blocks(pruned, LayerMap(pruned), sparsities, PruneOptions(pruner=pruner, batch_size=batch),
                 windows)
    _sync()
    return pruned, time.perf_counter() - start


def wikitext_task(tmp: Path, n_train: int = 32, n_val: int = 8, max_length: int = 128) -> dict:
    """A LayerIF task on the evaluation's text: WikiText-2 valid paragraphs (≥ 400 characters, no
    headings) written to jsonl; every 8th of the first ``8 · n_val`` is validation (the query), the
    others train; each truncated to ``max_length`` tokens."""
    import json

    from layerif_core.tasks import corpus_text

    lines = corpus_text("wikitext2", "validation").splitlines()
    paragraphs = [x.strip() for x in lines if len(x.strip()) >= 400 and not x.strip().startswith("=")]
    val = paragraphs[1:8 * n_val:8][:n_val]
    train = [x for x in paragraphs if x not in val][:n_train]
    for name, rows in (("train", train), ("validation", val)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return {"name": "wikitext",
            "train": {"source": str(tmp / "train.jsonl"), "max_length": max_length},
            "validation": {"source": str(tmp / "validation.jsonl"), "max_length": max_length}}


def quality_study(sparsities: list[float], which: list[str], samples: int, seqlen: int,
                  eval_windows: int, directory: Path, aggregator: str = "helpful_sum") -> dict:
    """The quality table as a study (``layerif study``): arms uniform / HT-SR (AlphaPruning) /
    LayerIF (``ekfac`` + ``aggregator`` on :func:`wikitext_task`), all with ``alpha_pruning``
    (ε = 0.2); grid pruner × sparsity; seed 0; WikiText-2 test perplexity."""
    directory.mkdir(parents=True, exist_ok=True)
    arms = {"uniform": {"scorer": {"name": "uniform"}, "allocation": {"name": "uniform_sparsity"}},
            "htsr": {"scorer": {"name": "htsr_alpha"}},
            "layerif": {"scorer": {"name": "layerif", "estimator": {"name": "ekfac"},
                                   "aggregator": {"name": aggregator}}}}
    return {
        "name": "bench_prune", "output_dir": str(directory.parent), "seeds": [0],
        "base": {
            "model": {"source": "embedded:smollm2-135m", "dtype": "float32"}, "batch_size": 8,
            "tasks": [wikitext_task(directory)],
            "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}},
            "application": {"name": "prune", "options": {
                "save_model": False, "save_masks": False, "batch_size": 8,
                "calibration": {"source": "bundled:wikitext2", "split": "validation",
                                "samples": samples, "seqlen": seqlen}}},
            "evaluation": [{"name": "perplexity", "options": {
                "source": "bundled:wikitext2", "split": "test", "seqlen": seqlen,
                "max_windows": eval_windows}}]},
        "arms": [{"label": name, "control": name == "uniform", "overrides": arms[name]}
                 for name in which],
        "grid": {"application.options.pruner": ["magnitude", "wanda", "sparsegpt"],
                 "allocation.options.sparsity": sparsities},
        "metrics": ["perplexity/wikitext2"],
    }


def quality_table(sparsities: list[float], which: list[str], samples: int, seqlen: int,
                  eval_windows: int, directory: Path, aggregator: str = "helpful_sum") -> dict:
    """Perplexity of the dense model and of every pruner × sparsity × allocation: the rows of the
    study's report (cells resume from ``directory``)."""
    import json

    from layerif_core.study.report import build_report
    from layerif_core.study.runner import run_study

    study = quality_study(sparsities, which if "uniform" in which else ["uniform", *which], samples,
                          seqlen, eval_windows, directory, aggregator)
    outcome = run_study(directory / "study.yaml", data=study, show_progress=False)
    build_report(outcome.directory)
    summary = json.loads((outcome.directory / "summary.json").read_text())
    [ppl] = summary["metrics"]
    rows = [{"pruner": "dense", "sparsity": 0.0, "allocation": "-", "ppl": round(ppl["dense"], 3)}]
    for point in ppl["points"]:
        for row in point["rows"]:
            rows.append({"pruner": point["grid"]["application.options.pruner"],
                         "sparsity": point["grid"]["allocation.options.sparsity"],
                         "allocation": row["arm"], "ppl": round(row["mean"], 3)})
    scores = {}
    for cell in (json.loads(p.read_text()) for p in sorted((outcome.directory / "cells").glob("*.json"))):
        if cell.get("scores"):
            scores.setdefault(cell["arm"], [round(v, 5) for v in cell["scores"]["values"]])
    return {"quality_sizes": f"calibration {samples} x {seqlen} tokens of WikiText-2 valid; perplexity "
            f"over {eval_windows} x {seqlen} tokens of WikiText-2 test", "table": rows,
            "scores": {k: v for k, v in scores.items() if k != "uniform"},
            "report": str(outcome.directory / "report.html")}


def speed(model, tokenizer, samples: int, seqlen: int, batch: int = 8) -> dict:
    """Seconds of Wanda and SparseGPT pruning at 50% over the time of the calibration forward passes."""
    import os

    from layerif_core.layers import LayerMap
    from layerif_prune.calibration import calibration_windows

    windows = calibration_windows(_tokens(tokenizer, "valid", 50 * samples * seqlen), samples, seqlen,
                                  seed=0)
    _forward_seconds(model, windows[:batch], batch)  # warm-up: first-call allocations
    load_before = os.getloadavg()
    forward = _forward_seconds(model, windows, batch)
    out = {"calibration": f"{samples} x {seqlen} tokens", "forward_s": round(forward, 2),
           "torch_threads": torch.get_num_threads()}
    print(out, flush=True)
    n_layers = len(LayerMap(model))
    for pruner in ("wanda", "sparsegpt"):
        pruned, seconds = _prune(model, pruner, [0.5] * n_layers, windows, batch)
        del pruned
        out[f"{pruner}_s"] = round(seconds, 2)
        out[f"{pruner}_x_forward"] = round(seconds / forward, 2)
        print({k: out[k] for k in (f"{pruner}_s", f"{pruner}_x_forward")}, os.getloadavg(), flush=True)
    out["goal"] = "wanda <= 1.5x, sparsegpt <= 5x of the forward passes"
    out["load_average_1_5_15min"] = {"before": [round(x, 2) for x in load_before],
                                      "after": [round(x, 2) for x in os.getloadavg()]}
    return out


def run(quick: bool) -> dict:
    import tempfile

    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model

    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    samples, seqlen = (16, 256) if quick else (128, 512)
    result = speed(model, tokenizer, samples, seqlen)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            quality = quality_table([0.5], ["uniform"], 8, 256, 8, Path(tmp) / "bench_prune")
        else:
            quality = quality_table([0.5, 0.6, 0.7], ["uniform", "htsr", "layerif"], 32, 512, 32,
                                    Path(tmp) / "bench_prune")
    quality.pop("report")
    return {**result, **quality}


def main() -> None:
    """``python -m benchmarks.bench_prune [--speed]``: the quality table (a study whose cells are
    kept in --study-dir and resumed) or the speed, sizes given."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--sparsities", default="0.5,0.6,0.7")
    p.add_argument("--allocations", default="uniform,htsr,layerif",
                   help="Comma-separated arms: uniform, htsr, layerif.")
    p.add_argument("--output", default="prune_table.json")
    p.add_argument("--speed", action="store_true", help="Measure pruning speed instead.")
    p.add_argument("--study-dir", type=Path, default=Path("studies/bench_prune"),
                   help="The study directory: its cells (and LayerIF's factors and influences) "
                   "are reused by a rerun; report.html and summary.md are written there.")
    p.add_argument("--aggregator", default="helpful_sum", help="LayerIF aggregator (helpful_sum, "
                   "top_helpful, net_sum, harmful_sum, ...).")
    a = p.parse_args()
    if a.speed:
        from layerif_core.config import ModelSpec
        from layerif_core.models import load_model

        model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
        result = speed(model, tokenizer, a.samples, a.seqlen)
    else:
        which = [x for x in a.allocations.split(",") if x]
        result = quality_table([float(x) for x in a.sparsities.split(",")], which, a.samples, a.seqlen,
                               a.eval_windows, a.study_dir, aggregator=a.aggregator)
    Path(a.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
