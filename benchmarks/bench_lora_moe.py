"""LoRA-MoE benchmarks on SmolLM2-135M.

``run(quick)`` (``python -m benchmarks``): training step time and peak memory of LoRA-MoE (4 experts
of rank r per layer, top-2) against plain peft LoRA of the same total rank 4r, on the same modules and
batch. Goal: MoE step time within 1.5x of plain LoRA. Each variant runs in its own process so that
the peak resident memory (CPU) or the peak allocated memory (CUDA) is its own.

``python -m benchmarks.bench_lora_moe table``: the allocation study of docs/results/lora_moe.md as a
study (``layerif_core.study``): uniform vs LayerIF vs HT-SR expert allocations with the same total
and steps, several seeds, lm-eval multiple-choice accuracy on a bundled task. The paper's whole table
is the preset ``examples/studies/lora_moe.yaml``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
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

def allocation_study(task: str, seeds: int, steps: int, total_per_layer: int, n_eval: int,
                     directory: Path, batch: int = 8, given: dict[str, list[int]] | None = None) -> dict:
    """Uniform vs LayerIF vs HT-SR expert allocations as a study (``layerif study``): the same
    total, steps and data for every arm, ``seeds`` seeds; lm-eval multiple-choice accuracy on the
    bundled task's test split and the final validation loss. ``given``: ``{label: experts per
    layer}`` from an earlier study, run as ``given_experts`` arms (no scoring)."""
    from layerif_core.config import ModelSpec
    from layerif_core.layers import LayerMap
    from layerif_core.models import load_model

    n_layers = len(LayerMap(load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))[0]))
    total = total_per_layer * n_layers
    data = {"source": f"bundled:{task}", "limit": 32, "max_length": 64}
    arms = {"uniform": {"scorer": {"name": "uniform"},
                        "allocation": {"name": "uniform_experts", "options": {"total": total}}},
            "layerif": {"scorer": {"name": "layerif"}},
            "htsr": {"scorer": {"name": "htsr_alpha"}}}
    for label, values in (given or {}).items():
        arms[label] = {"scorer": {"name": "uniform"},
                       "allocation": {"name": "given_experts", "options": {"values": values}}}
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "name": directory.name, "output_dir": str(directory.parent), "seeds": list(range(seeds)),
        "base": {
            "model": {"source": "embedded:smollm2-135m", "dtype": "auto"}, "batch_size": 8,
            "tasks": [{"name": task, "train": data,
                       "validation": {**data, "split": "validation", "limit": 8}}],
            "allocation": {"name": "alphalora_experts", "options": {"total": total, "beta": 3.0}},
            "application": {"name": "lora_moe", "options": {
                "rank": 4, "alpha": 8, "dropout": 0.05, "lr": 2e-3, "max_steps": steps,
                "batch_size": batch, "top_k": 2, "target_modules": ["q_proj", "v_proj"],
                "aux_loss_weight": 0.01,
                "train": {"source": f"bundled:{task}", "limit": steps * batch, "max_length": 64},
                "validation": {"source": f"bundled:{task}", "split": "validation", "limit": 8,
                               "max_length": 64}}},
            "evaluation": [{"name": "lm_eval", "options": {"tasks": [f"layerif_{task}"],
                                                           "limit": n_eval}}]},
        "arms": [{"label": label, "control": label == "uniform", "overrides": overrides}
                 for label, overrides in arms.items()],
        "metrics": [f"lm_eval/layerif_{task}/acc", "lora_moe/validation_loss"],
    }


def table(task: str, seeds: int, steps: int, total_per_layer: int, n_eval: int, directory: Path,
          batch: int = 8, given: Path | None = None) -> dict:
    """Run :func:`allocation_study` (cells resume from ``directory``) and return its summary."""
    from layerif_core.study.report import build_report
    from layerif_core.study.runner import run_study

    study = allocation_study(task, seeds, steps, total_per_layer, n_eval, directory, batch,
                             json.loads(given.read_text()) if given is not None else None)
    outcome = run_study(directory / "study.yaml", data=study, show_progress=False)
    build_report(outcome.directory)
    summary = json.loads((outcome.directory / "summary.json").read_text())
    out: dict = {"task": task, "steps": steps, "seeds": seeds, "n_eval": n_eval,
                 "report": str(outcome.directory / "report.html"), "summary": {}}
    for metric in summary["metrics"]:
        if metric["dense"] is not None:
            out[f"base {metric['name']}"] = metric["dense"]
        for row in metric["points"][0]["rows"]:
            out["summary"].setdefault(row["arm"], {})[metric["name"]] = {
                "mean": row["mean"], "ci95": row["ci95"], "paired": row.get("paired")}
    return out


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
                        help="JSON {label: experts per layer}: extra given_experts arms.")
    parser.add_argument("--study-dir", type=Path, default=Path("studies/bench_lora_moe"),
                        help="The study directory (cells resumed; report.html and summary.md).")
    a = parser.parse_args()
    if a.what == "run":
        print(json.dumps(run(a.quick), indent=2))
    else:
        res = table(a.task, a.seeds, a.steps, a.per_layer, a.n_eval, a.study_dir, a.batch, a.allocations)
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
