"""Pruning speed and quality on SmolLM2-135M with WikiText-2 (layerif-prune).

Speed: the time of Wanda and SparseGPT pruning (block by block, inputs recomputed through the pruned
blocks) against the time of the calibration forward passes alone (the whole model over the same
windows). Goals: Wanda ≤ 1.5×, SparseGPT ≤ 5×. Full mode uses 128 × 512 calibration tokens (the
issue's size); quick mode 16 × 256.

Quality (the docs' table): WikiText-2 test perplexity of the dense model and of magnitude, Wanda and
SparseGPT at the given sparsities, with uniform, HT-SR (AlphaPruning) and LayerIF allocation
(alpha_pruning, ε = 0.2). Sizes are recorded in the result; ``run(quick=True)`` evaluates fewer
settings on fewer tokens.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch


def _tokens(tokenizer, split: str, chars: int) -> torch.Tensor:
    """The first ``chars`` characters of bundled WikiText-2 ``split`` ('valid' = 'validation')."""
    from layerif_core.tasks import corpus_text

    text = corpus_text("wikitext2", {"valid": "validation"}.get(split, split))[:chars]
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def _perplexity(model, tokens: torch.Tensor, seqlen: int, windows: int, batch: int = 4) -> float:
    x = tokens[: windows * seqlen].reshape(windows, seqlen).to(next(model.parameters()).device)
    total, count = 0.0, 0
    for start in range(0, windows, batch):
        xb = x[start:start + batch]
        logits = model(input_ids=xb, use_cache=False).logits[:, :-1].float()
        nll = torch.logsumexp(logits, -1) - logits.gather(2, xb[:, 1:, None])[..., 0]
        total, count = total + float(nll.double().sum()), count + nll.numel()
    return math.exp(total / count)


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


def _allocations(model, sparsity: float, scores: dict, uniform: bool = True) -> dict[str, list[float]]:
    """Per-layer sparsity: uniform, and alpha_pruning (ε = 0.2) from each scorer's scores."""
    from layerif_core.allocators.sparsity import AlphaPruningOptions, AlphaPruningSparsity
    from layerif_core.layers import LayerMap

    lm = LayerMap(model)
    weights = [float(w) for w in lm.num_params()]
    out = {"uniform": [sparsity] * len(lm)} if uniform else {}
    alloc = AlphaPruningSparsity(AlphaPruningOptions(sparsity=sparsity, epsilon=0.2))
    for name, s in scores.items():
        out[name] = alloc.allocate(s, weights).values
    return out


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


def layer_scores(model, tokenizer, which: list[str], cache: Path | None = None,
                 aggregator: str = "positive_sum", n_train: int = 32, n_val: int = 8) -> dict:
    """HT-SR alpha and LayerIF (``ekfac`` + ``aggregator``; ``n_train`` / ``n_val`` paragraphs of
    WikiText-2 valid, 128 tokens each: :func:`wikitext_task`) scores of the model. With ``cache``,
    the runs live in ``cache/runs/<name>``: their ``scores.json`` is reused when it was made with the
    same aggregator, and the EK-FAC factors and ``I[l, i]`` are kept (another aggregator reuses them)."""
    import tempfile

    from layerif_core.artifacts import read_scores
    from layerif_core.config import RunConfig
    from layerif_core.pipeline import compute_layer_scores, open_run

    scorers = {"htsr": {"name": "htsr_alpha"},
               "layerif": {"name": "layerif", "estimator": {"name": "ekfac"},
                           "aggregator": {"name": aggregator}}}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        task = wikitext_task(Path(tmp), n_train, n_val)  # fingerprinted by content: reuse holds
        runs = str(cache / "runs") if cache is not None else tmp
        for name in which:
            saved = Path(runs) / name / "scores.json"
            if cache is not None and saved.is_file():
                kept = read_scores(saved).get(task["name"])
                if kept is not None and kept.details.get("aggregator") in (None, aggregator):
                    out[name] = kept
                    continue
            cfg = RunConfig.model_validate({"name": name, "output_dir": runs, "tasks": [task],
                                            "scorer": scorers[name], "batch_size": 8})
            ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
            out[name] = compute_layer_scores(ctx)[task["name"]]
            print(f"{name} scores:", [round(float(x), 5) for x in out[name].values], flush=True)
    return out


def quality_table(model, tokenizer, sparsities: list[float], which: list[str], windows: torch.Tensor,
                  eval_seqlen: int, eval_windows: int, batch: int = 8, cache: Path | None = None,
                  aggregator: str = "positive_sum") -> dict:
    """Perplexity of dense and pruned models for every sparsity, allocation and pruner (each row
    printed as it is measured)."""
    import json

    test = _tokens(tokenizer, "test", 40 * eval_seqlen * eval_windows)
    scorers = [x for x in which if x != "uniform"]
    scores = layer_scores(model, tokenizer, scorers, cache, aggregator) if scorers else {}
    rows = [{"pruner": "dense", "sparsity": 0.0, "allocation": "-",
             "ppl": round(_perplexity(model, test, eval_seqlen, eval_windows), 3)}]
    print(json.dumps(rows[-1]), flush=True)
    for s in sparsities:
        for alloc_name, values in _allocations(model, s, scores, "uniform" in which).items():
            for pruner in ("magnitude", "wanda", "sparsegpt"):
                pruned, seconds = _prune(model, pruner, values, windows, batch)
                rows.append({"pruner": pruner, "sparsity": s, "allocation": alloc_name,
                             "ppl": round(_perplexity(pruned, test, eval_seqlen, eval_windows), 3),
                             "prune_s": round(seconds, 1)})
                print(json.dumps(rows[-1]), flush=True)
                del pruned
    return {"quality_sizes": f"calibration {windows.shape[0]} x {windows.shape[1]} tokens of "
            f"WikiText-2 valid; perplexity over {eval_windows} x {eval_seqlen} tokens of WikiText-2 "
            "test", "table": rows,
            "scores": {k: [round(float(x), 5) for x in v.values] for k, v in scores.items()}}


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
    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model
    from layerif_prune.calibration import calibration_windows

    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    samples, seqlen = (16, 256) if quick else (128, 512)
    result = speed(model, tokenizer, samples, seqlen)
    n = 8 if quick else 32
    windows = calibration_windows(_tokens(tokenizer, "valid", 50 * n * seqlen), n, seqlen, seed=0)
    if quick:
        quality = quality_table(model, tokenizer, [0.5], ["uniform"], windows, 256, 8)
    else:
        # positive_sum is all zero for the pretrained model on WikiText (every I[l, i] > 0; see
        # docs/pruning.md), so the full mode allocates by the "ALL" variant, sum
        quality = quality_table(model, tokenizer, [0.5, 0.6, 0.7], ["uniform", "htsr", "layerif"],
                                windows, 512, 32, aggregator="sum")
    return {**result, **quality}


def main() -> None:
    """``python -m benchmarks.bench_prune [--speed]``: the quality table (or the speed), sizes given."""
    import argparse
    import json

    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model
    from layerif_prune.calibration import calibration_windows

    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--sparsities", default="0.5,0.6,0.7")
    p.add_argument("--allocations", default="uniform,htsr,layerif",
                   help="Comma-separated: uniform, htsr, layerif.")
    p.add_argument("--output", default="prune_table.json")
    p.add_argument("--speed", action="store_true", help="Measure pruning speed instead.")
    p.add_argument("--scores-dir", type=Path, default=None,
                   help="Keep the scoring runs in <dir>/runs/<scorer> and reuse their scores.json.")
    p.add_argument("--aggregator", default="positive_sum", help="LayerIF aggregator (positive_sum, "
                   "sum, top_fraction, ...); the influences in --scores-dir are reused.")
    a = p.parse_args()
    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    if a.speed:
        result = speed(model, tokenizer, a.samples, a.seqlen)
        Path(a.output).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    windows = calibration_windows(_tokens(tokenizer, "valid", 50 * a.samples * a.seqlen), a.samples,
                                  a.seqlen, seed=0)
    which = [x for x in a.allocations.split(",") if x]
    result = quality_table(model, tokenizer, [float(x) for x in a.sparsities.split(",")], which,
                           windows, a.seqlen, a.eval_windows, cache=a.scores_dir,
                           aggregator=a.aggregator)
    Path(a.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
