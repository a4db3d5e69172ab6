"""LoRA-MoE benchmarks on SmolLM2-135M.

``run(quick)`` (``python -m benchmarks``): training step time and peak memory of LoRA-MoE (4 experts
of rank r per layer, top-2) against plain peft LoRA of the same total rank 4r, on the same modules and
batch. Goal: MoE step time within 1.5x of plain LoRA. Each variant runs in its own process so that
the peak resident memory (CPU) or the peak allocated memory (CUDA) is its own.

``python -m benchmarks.bench_lora_moe table``: the allocation study of docs/lora_moe.md: uniform vs
LayerIF vs HT-SR expert allocations with the same total and steps, several seeds, log-likelihood
multiple-choice accuracy on a bundled task.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _load():
    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32", device=device))


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_variant(variant: str, rank: int, experts: int, top_k: int, batch: int, seqlen: int,
                steps: int) -> dict:
    """Time ``steps`` optimizer steps of one variant ('moe' or 'lora') in this process."""
    from layerif_core.layers import LayerMap
    from layerif_lora_moe import inject_lora_moe
    from layerif_lora_moe.layer import token_mask

    torch.manual_seed(0)
    model, _ = _load()
    device = next(model.parameters()).device
    n_layers = len(LayerMap(model))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_bytes(device)
    if variant == "moe":
        handle = inject_lora_moe(model, LayerMap(model), [experts] * n_layers, rank=rank, alpha=2 * rank,
                                 target_modules=TARGETS, top_k=top_k)
    else:
        handle = inject_lora_moe(model, LayerMap(model), [1] * n_layers, rank=rank * experts,
                                 alpha=2 * rank * experts, target_modules=TARGETS, top_k=1)
    params = list(handle.trainable().values())
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(100, 20000, (batch, seqlen), device=device)
    mask = torch.ones_like(ids)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with token_mask(mask):
            out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
            loss = out.loss + 0.01 * handle.aux_loss().to(device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = _peak_bytes(device)
    return {"variant": variant, "step_s": statistics.median(times[1:]),
            "peak_mb": round(peak / 2**20, 1), "peak_over_load_mb": round((peak - before) / 2**20, 1),
            "trainable_params": sum(p.numel() for p in params), "device": str(device)}


def _subprocess(args: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_lora_moe", "_one", json.dumps(args)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict:
    """Step time and peak memory: LoRA-MoE (4 experts x rank r, top-2) vs plain LoRA of rank 4r."""
    cfg = dict(rank=4, experts=4, top_k=2, batch=2 if quick else 8, seqlen=64 if quick else 256,
               steps=2 if quick else 8)
    rows = [_subprocess({**cfg, "variant": v}) for v in ("lora", "moe")]
    ratio = rows[1]["step_s"] / rows[0]["step_s"]
    return {"table": rows, "config": cfg, "moe_over_lora_step_time": round(ratio, 3),
            "goal": "moe_over_lora_step_time <= 1.5", "goal_met": ratio <= 1.5}


# --- the allocation study ------------------------------------------------------------------------

PROMPT = "Question: {question}\nAnswer: "


@torch.no_grad()
def choice_accuracy(model, tokenizer, records: list[dict]) -> float:
    """Multiple-choice accuracy: the choice with the highest summed log-probability after the prompt."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for rec in records:
        prompt = tokenizer(PROMPT.format(**rec), add_special_tokens=False)["input_ids"]
        seqs = [prompt + tokenizer(c, add_special_tokens=False)["input_ids"] for c in rec["choices"]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device))
                                 .logits.float(), dim=-1).cpu()
        scores = []
        for i, s in enumerate(seqs):
            pos = torch.arange(len(prompt), len(s))
            scores.append(float(logp[i, pos - 1, torch.tensor(s)[pos]].sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == rec["label"])
    return correct / len(records)


def table(task: str, seeds: int, steps: int, total_per_layer: int, n_eval: int, out: Path,
          batch: int = 8, given: Path | None = None) -> dict:
    """Uniform vs LayerIF vs HT-SR expert allocations: same total, steps, data; ``seeds`` seeds each.

    ``given``: a JSON file ``{label: [experts per layer]}`` from an earlier study (skips the scoring).
    """
    from layerif_core.config import RunConfig
    from layerif_core.layers import LayerMap
    from layerif_core.pipeline import allocate, open_run, score_task
    from layerif_core.tasks import bundled_records
    from layerif_lora_moe import LoraMoeOptions
    from layerif_lora_moe.application import LoraMoeApplication

    base, tok = _load()
    n_layers = len(LayerMap(base))
    work = Path(tempfile.mkdtemp(prefix="lora-moe-table-"))
    data = {"name": task, "train": {"source": f"bundled:{task}", "limit": 32, "max_length": 64},
            "validation": {"source": f"bundled:{task}", "split": "validation", "limit": 8,
                           "max_length": 64}}
    eval_records = bundled_records(task, "test")[:n_eval]
    results: dict = {"task": task, "steps": steps, "seeds": seeds, "n_eval": n_eval, "runs": []}
    results["base_accuracy"] = choice_accuracy(base, tok, eval_records)
    print("base accuracy", results["base_accuracy"], flush=True)
    scorers = {"uniform": ("uniform", "uniform_experts"), "layerif": ("layerif", "alphalora_experts"),
               "htsr": ("htsr_alpha", "alphalora_experts")}
    allocations = json.loads(given.read_text()) if given is not None else {}
    for label, (scorer, allocator) in scorers.items():
        if label in allocations:
            continue
        cfg = RunConfig.model_validate({
            "name": f"scores-{label}", "output_dir": str(work), "tasks": [data], "batch_size": 8,
            "scorer": {"name": scorer}, "allocation": {"name": allocator, "options": {
                "total": total_per_layer * n_layers, "beta": 3.0} if allocator == "alphalora_experts"
                else {"total": total_per_layer * n_layers}}})
        ctx = open_run(cfg, show_progress=False, model=base, tokenizer=tok)
        t0 = time.perf_counter()
        scores = {task: score_task(ctx, cfg.tasks[0])}
        alloc = allocate(ctx, scores)[task]
        allocations[label] = alloc.values
        print(label, "scored in", round(time.perf_counter() - t0, 1), "s:", alloc.values, flush=True)
    results["allocations"] = allocations
    moe = dict(rank=4, alpha=8, dropout=0.05, lr=2e-3, max_steps=steps, batch_size=batch, top_k=2,
               target_modules=["q_proj", "v_proj"], aux_loss_weight=0.01,
               train={"source": f"bundled:{task}", "limit": steps * batch, "max_length": 64},
               validation={"source": f"bundled:{task}", "split": "validation", "limit": 8,
                           "max_length": 64})
    from layerif_core.protocols import Allocation

    for seed in range(seeds):
        for label, values in allocations.items():
            model = copy.deepcopy(base)
            cfg = RunConfig.model_validate({"name": f"{label}-{seed}", "output_dir": str(work),
                                            "tasks": [data], "seed": seed, "batch_size": 8})
            ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tok)
            app = LoraMoeApplication(LoraMoeOptions(**moe, seed=seed))
            t0 = time.perf_counter()
            app.apply(ctx, model, Allocation("experts", values, label))
            row = {"allocation": label, "seed": seed, "val_loss_start": app.log.validation[0]["loss"],
                   "val_loss_end": app.log.validation[-1]["loss"],
                   "accuracy": choice_accuracy(model, tok, eval_records),
                   "seconds": round(time.perf_counter() - t0, 1)}
            results["runs"].append(row)
            print(row, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    summary = {}
    for label in allocations:
        acc = [r["accuracy"] for r in results["runs"] if r["allocation"] == label]
        loss = [r["val_loss_end"] for r in results["runs"] if r["allocation"] == label]
        summary[label] = {"accuracy_mean": statistics.mean(acc),
                          "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                          "val_loss_mean": statistics.mean(loss),
                          "val_loss_std": statistics.stdev(loss) if len(loss) > 1 else 0.0}
    results["summary"] = summary
    out.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_one":
        print(json.dumps(one_variant(**json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_lora_moe")
    parser.add_argument("what", choices=["run", "table"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--per-layer", type=int, default=3, help="Average experts per layer.")
    parser.add_argument("--n-eval", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--allocations", type=Path, default=None,
                        help="JSON {label: experts per layer} from an earlier study: skip scoring.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/_work/lora_moe_table.json")
    a = parser.parse_args()
    if a.what == "run":
        print(json.dumps(run(a.quick), indent=2))
    else:
        res = table(a.task, a.seeds, a.steps, a.per_layer, a.n_eval, a.out, a.batch, a.allocations)
        print(json.dumps(res["summary"], indent=2))


if __name__ == "__main__":
    main()
