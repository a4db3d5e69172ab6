"""The scale goals on one GPU (architecture §8), no network: random-init models built from the real
configs (timings do not depend on the weights), WikiText-2 windows tokenised with the SmolLM2
tokenizer when one is given (``--tokenizer DIR``), else random token ids of the model's vocabulary.

Phases (``--phases``, default all; each writes ``$OUT/bench_gpu.json`` as it finishes):

- ``throughput``: matmul FLOP/s in float32 and bfloat16, float64 ``eigh`` times;
- ``smollm2``: SmolLM2-135M shape, float32 and bfloat16: plain forward+backward passes, EK-FAC
  (covariance, correction, query+score phases), ``grad_dot``; time over the plain-pass floor and
  over the FLOP floor (:mod:`layerif_core.cost`), peak device memory;
- ``tinyllama``: TinyLlama-1.1B shape (``--tinyllama-layers`` of 22), float32;
- ``mistral7b``: Mistral-7B shape (32 layers, hidden 4096, MLP 14336, 8 KV heads; ``--mistral-layers``),
  bfloat16, EK-FAC over every linear module, 256 train × 512 tokens and 32 queries;
- ``datainf7b``: the same model with a LoRA r=8 adapter on all seven linears of every layer, DataInf
  on 300 train × 50 validation sequences of 128 tokens (the paper's sizes; 402.77 s per layer there);
- ``datainf_stream7b``: the LayerIF authors' own setting at the Mistral-7B shape: no adapter, DataInf
  streamed in Kronecker form over the full q/k/v/o weights of every block (``--datainf-layers`` of
  32), bfloat16, 300 train × 50 validation sequences of 128 tokens (``--datainf-train``,
  ``--datainf-val``; fewer are extrapolated); seconds per block and for the whole model against the
  paper's 402.77 s per block (goal: the whole model in under 10 minutes on one H200), over a plain
  training pass over the same examples, and peak device memory;
- ``ekfac_qwen`` (not in the default set): the cell the newest influence libraries publish: EK-FAC
  at the Qwen2.5-0.5B and Qwen2.5-1.5B shapes, float32, 64 training × 1 query sequences of 512
  tokens, every linear module at full dimension, one GPU: seconds of each stage (covariances +
  eigendecomposition, eigenvalue correction, query + score) and peak device memory, printed next to
  the published anchors on one H200 (kronfluence, full dimension: 84.7 s and 287.8 s; dattri's LLM
  benchmark, rank-64 projection: 12.8 s and 14.2 s);
- ``profile`` (not in the default set): ``torch.profiler`` of a plain training pass and EK-FAC's two
  fit stages at the SmolLM2 shape in bf16: the top operators by device time and the kernels
  launched per batch.

``--scale tiny`` shrinks every model and size so the script runs on a CPU in a minute (a check of the
script, not a measurement). Run: ``python -m benchmarks.bench_gpu --out $OUT [--tokenizer DIR]``.
The SmolLM2 tokenizer is the ``tokenizer.json`` and ``tokenizer_config.json`` of the converted
embedded model (``~/.cache/layerif/gguf/SmolLM2-135M-Instruct.*/``); copy the two files into a folder
that travels with the repository. ``--budget-gb`` sets EK-FAC's ``memory_budget_gb`` (e.g. to emulate
an 80 GB card on a larger one). The default phase set fits about 8 minutes on one H200 with
``--mistral-layers 8`` (``datainf_stream7b`` runs all 32 blocks: its goal is the whole model);
the whole Mistral-7B (32 layers) for EK-FAC is a run of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from layerif_core.artifacts import RunDir
from layerif_core.config import RunConfig
from layerif_core.cost import ekfac_flops, matmul_flops_per_second
from layerif_core.data import TokenizedSplit
from layerif_core.losses import sequence_losses
from layerif_core.pipeline import open_run
from layerif_core.registry import get_registry
from layerif_core.shapes import known_config

SHAPES = {  # bench name -> the model whose real config sizes the random-init model (layerif_core.shapes)
    "smollm2-135m": "embedded:smollm2-135m",
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",  # q/k/v with bias, tied embeddings
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
}
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
PAPER_DATAINF_SECONDS_PER_LAYER = 402.77
# published EK-FAC-cell times on one H200 (64 train × 1 query × 512 tokens, float32)
QWEN_ANCHORS_S = {
    "qwen2.5-0.5b": {"kronfluence (full dimension)": 84.7, "dattri-llm (rank-64 projection)": 12.8},
    "qwen2.5-1.5b": {"kronfluence (full dimension)": 287.8, "dattri-llm (rank-64 projection)": 14.2},
}


def build_model(shape: str, layers: int | None, dtype: torch.dtype, device: torch.device,
                tiny: bool) -> torch.nn.Module:
    """A random-init causal LM of the named shape (``layers`` of its blocks)."""
    import transformers as tf

    from layerif_core.shapes import model_config

    real = model_config(SHAPES[shape])
    cfg = {k: v for k, v in real.to_dict().items() if k != "layer_types"}  # rebuilt for the depth
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    if tiny:
        cfg.update(TINY, num_hidden_layers=min(cfg["num_hidden_layers"], 2))
        cfg.pop("head_dim", None)  # the tiny width's own
    cfg.update(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = type(real).from_dict(cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def windows(tokenizer: Any, vocab: int, n: int, length: int, name: str, offset: int = 0
            ) -> TokenizedSplit:
    """``n`` windows of ``length`` tokens: WikiText-2 (test) tokenised, or random ids."""
    if tokenizer is not None:
        from layerif_core.tasks.text import corpus_text

        ids = tokenizer(corpus_text("wikitext2", "test"))["input_ids"]
        ids = [i if i < vocab else 0 for i in ids]
        need = (offset + n) * length
        ids = (ids * math.ceil(need / max(len(ids), 1)))[:need]
        rows = [ids[(offset + k) * length:(offset + k + 1) * length] for k in range(n)]
        source = "wikitext2"
    else:
        gen = torch.Generator().manual_seed(1234 + offset)
        rows = torch.randint(3, vocab, (n, length), generator=gen).tolist()
        source = "random"
    return TokenizedSplit(name, rows, [list(r) for r in rows], f"{source}-{name}-{n}x{length}-{offset}")


def context(model, tokenizer, label: str, batch_size: int, workdir: Path, layers: dict | None = None):
    cfg = RunConfig.model_validate({
        "name": label, "output_dir": str(workdir), "batch_size": batch_size,
        "layers": layers or {"modules": "all"},
        "tasks": [{"name": "t", "train": {"source": "bundled:capitals"},
                   "validation": {"source": "bundled:capitals", "split": "validation"}}]})
    tok = tokenizer if tokenizer is not None else SimpleNamespace(pad_token_id=0)
    return open_run(cfg, show_progress=False, model=model, tokenizer=tok)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, fn) -> tuple[float, float, Any]:
    """``(seconds, peak device GiB during fn, result)``."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak, out


def plain_pass(ctx, split) -> None:
    """Forward+backward of the summed loss with parameter gradients (a training pass)."""
    flags = [(p, p.requires_grad) for p in ctx.model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    for batch in split.batches(ctx.batch_size, ctx.pad_id):
        sequence_losses(ctx.model, batch.to(ctx.device)).sum().backward()
        ctx.model.zero_grad(set_to_none=True)
    for p, flag in flags:
        p.requires_grad_(flag)


def ekfac_phases(ctx, train, query, workdir: Path, options: dict | None = None) -> dict:
    """EK-FAC with each stage timed: covariances+eigh, correction, query+score."""
    from layerif_core.estimators.factors import fit_eigen, fit_lambda, module_groups, open_store

    dev = ctx.device
    ctx.run_dir = RunDir(workdir / "ekfac")
    est = get_registry().build("estimator", "ekfac", options or {})
    est.store, est.groups = open_store(ctx, train, est.options), module_groups(ctx, train)
    t_eig, m_eig, _ = measure(dev, lambda: fit_eigen(ctx, train, est.options, est.store, est.groups))
    t_lam, m_lam, _ = measure(dev, lambda: fit_lambda(ctx, train, est.options, est.store, est.groups))
    est._fitted = (id(ctx), train.fingerprint)
    t_inf, m_inf, influence = measure(dev, lambda: est.influence(ctx, train, query))
    steps = ctx.run_dir.manifest["steps"]
    stage_plans = [v["plan"] for k, v in steps.items() if k.startswith("factors/") and "plan" in v]
    plans = {k.rsplit("/", 1)[1]: v.get("plan", {}).get("P") for k, v in steps.items()
             if k.startswith("factors/")}
    largest = max([p["gb"] for plan in stage_plans for p in plan["partitions"]]
                  + [n / 2**30 for n in est.plan.needs], default=0.0)
    return {"seconds": round(t_eig + t_lam + t_inf, 2), "covariance_eigh_s": round(t_eig, 2),
            "correction_s": round(t_lam, 2), "query_score_s": round(t_inf, 2),
            "peak_gib": round(max(m_eig, m_lam, m_inf), 2), "partitions": plans,
            "largest_partition_gib": round(largest, 3),
            "influence_plan_P": est.plan.P, "finite": bool(torch.isfinite(influence).all()),
            "groups": len(est.groups), "modules": sum(len(g.modules) for g in est.groups),
            "_influence": influence.cpu(), "_groups": est.groups}


def bench_shape(shape: str, dtype: torch.dtype, layers: int | None, n_train: int, n_query: int,
                seq: int, batch: int, args, throughput: dict) -> dict:
    dev = torch.device(args.device)
    model = build_model(shape, layers, dtype, dev, args.scale == "tiny")
    tok = load_tokenizer(args.tokenizer)
    vocab = model.config.vocab_size
    train = windows(tok, vocab, n_train, seq, "train")
    query = windows(tok, vocab, n_query, seq, "query", offset=n_train)
    dname = str(dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(model, tok, f"{shape}-{dname}", batch, Path(tmp))
        plain_pass(ctx, query)  # warm-up
        t_train, m_train, _ = measure(dev, lambda: plain_pass(ctx, train))
        t_query, _, _ = measure(dev, lambda: plain_pass(ctx, query))
        ek = ekfac_phases(ctx, train, query, Path(tmp),
                          {"memory_budget_gb": args.budget_gb} if args.budget_gb else None)
        ctx.run_dir = RunDir(Path(tmp) / "grad_dot")
        t_gd, m_gd, _ = measure(dev, lambda: get_registry().build("estimator", "grad_dot")
                                .influence(ctx, train, query))
    rate = throughput.get(dname) or matmul_flops_per_second(dev, dtype)
    fl = ekfac_flops(model, ek.pop("_groups"), n_train, n_query, seq)
    gd_fl = ekfac_flops(model, [], n_train, n_query, seq, "grad_dot")["passes"]
    ek.pop("_influence")
    return {
        "model": shape, "dtype": dname, "layers": model.config.num_hidden_layers,
        "n_train": n_train, "n_query": n_query, "seq_len": seq, "batch": batch,
        "data": "wikitext2" if tok is not None else "random ids",
        "plain_train_pass_s": round(t_train, 2), "plain_query_pass_s": round(t_query, 2),
        "plain_pass_peak_gib": round(m_train, 2),
        "ekfac": ek, "ekfac_over_plain_floor": round(ek["seconds"] / (3 * t_train + t_query), 2),
        # goal: peak ≤ 1.5 × a plain forward+backward + the factors of the largest partition
        "ekfac_memory_goal_gib": round(1.5 * m_train + ek["largest_partition_gib"], 2),
        "ekfac_flop_floor_s": round(fl["total"] / rate, 2),
        "ekfac_over_flop_floor": round(ek["seconds"] / (fl["total"] / rate), 2),
        "ekfac_flops_by_part": {k: float(f"{v:.4g}") for k, v in fl.items()},
        "grad_dot_s": round(t_gd, 2), "grad_dot_peak_gib": round(m_gd, 2),
        "grad_dot_over_plain_floor": round(t_gd / (t_train + t_query), 2),
        "grad_dot_over_flop_floor": round(t_gd / (gd_fl / rate), 2),
        "matmul_tflops": round(rate / 1e12, 2),
    }


def phase_throughput(args) -> dict:
    dev = torch.device(args.device)
    tiny = args.scale == "tiny"
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        n = 1024 if tiny else None
        out[str(dtype).removeprefix("torch.")] = matmul_flops_per_second(dev, dtype, n)
    eigh = {}
    sizes = (64, 256) if args.scale == "tiny" else (576, 2048, 4096, 5632, 14336)
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=torch.float64)
        a = a @ a.T
        seconds, _, _ = measure(dev, lambda a=a: torch.linalg.eigh(a))
        eigh[str(n)] = round(seconds, 3)
    return {"matmul_flops_per_s": out, "eigh_float64_s": eigh, "bandwidth_bytes_per_s": bandwidth(dev, tiny)}


def bandwidth(dev: torch.device, tiny: bool) -> float:
    """Device memory bandwidth: bytes read and written by a copy of a large buffer, per second."""
    x = torch.empty(2**22 if tiny else 2**30, dtype=torch.uint8, device=dev)
    seconds, _, _ = measure(dev, lambda: x.clone())
    return 2 * x.numel() / seconds


def record_device(result: dict, name: str, path: Path) -> dict:
    """Write the measured throughput as row ``name`` of the plan's device table at ``path``: matmul
    FLOP/s per dtype, the float64 eigendecomposition rate (``9 n³`` over the largest size timed),
    memory and bandwidth; the share of matmul throughput a model pass reaches keeps its value."""
    from layerif_core.cost import DEVICES_FILE

    table = json.loads((path if path.is_file() else DEVICES_FILE).read_text())
    key = next((k for k in table if k.lower() in name.lower()), name)
    old = table.get(key, {"efficiency": 0.6})
    n, seconds = max(((int(k), v) for k, v in result["eigh_float64_s"].items()), key=lambda kv: kv[0])
    flops = {k: float(f"{v / 1e12:.4g}") for k, v in result["matmul_flops_per_s"].items()}
    flops.setdefault("float16", flops.get("bfloat16", flops["float32"]))
    memory = (torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available()
              else old.get("memory_gb", 0) * 1e9)
    table[key] = {"memory_gb": round(memory / 1e9, 1),
                  "bandwidth_gbs": round(result["bandwidth_bytes_per_s"] / 1e9),
                  "matmul_tflops": flops, "efficiency": old["efficiency"],
                  "eigh_tflops": float(f"{9 * n**3 / seconds / 1e12:.4g}"),
                  "source": f"measured by benchmarks/bench_gpu.py on {name}, torch {torch.__version__}"}
    path.write_text(json.dumps(table, indent=2) + "\n")
    return table[key]


def phase_datainf(args) -> dict:
    """Mistral-7B shape (bf16) with LoRA r=8 on all seven linears; DataInf at the paper's sizes."""
    from peft import LoraConfig, get_peft_model

    dev = torch.device(args.device)
    tiny = args.scale == "tiny"
    model = build_model("mistral-7b", args.mistral_layers, torch.bfloat16, dev, tiny)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    for name, p in model.named_parameters():  # a trained adapter: B is not zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    tok = load_tokenizer(args.tokenizer)
    vocab = model.config.vocab_size
    n_train, n_val, seq = (12, 4, 32) if tiny else (300, 50, 128)
    train = windows(tok, vocab, n_train, seq, "train")
    val = windows(tok, vocab, n_val, seq, "validation", offset=n_train)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(model, tok, "datainf7b", 4 if tiny else 16, Path(tmp), {"lora_only": True})
        est = get_registry().build("estimator", "datainf", {"memory_gb": 1000.0})
        seconds, peak, influence = measure(dev, lambda: est.influence(ctx, train, val))
        plan = ctx.run_dir.manifest["datainf"]["train"]["plan"]
    layers = model.config.num_hidden_layers
    return {"model": "mistral-7b + LoRA r=8 (q,k,v,o,gate,up,down)", "layers": layers,
            "n_train": n_train, "n_validation": n_val, "seq_len": seq, "seconds": round(seconds, 2),
            "seconds_per_layer": round(seconds / layers, 2),
            "paper_seconds_per_layer": PAPER_DATAINF_SECONDS_PER_LAYER,
            "peak_gib": round(peak, 2), "partitions": plan["P"],
            "finite": bool(torch.isfinite(influence).all())}


def phase_datainf_stream(args) -> dict:
    """Mistral-7B shape (bf16), no adapter: streamed DataInf on the q/k/v/o weights of every block,
    the LayerIF authors' computation (their code: one gradient pass per block, 402.77 s each)."""
    dev = torch.device(args.device)
    tiny = args.scale == "tiny"
    model = build_model("mistral-7b", args.datainf_layers, torch.bfloat16, dev, tiny)
    tok = load_tokenizer(args.tokenizer)
    vocab = model.config.vocab_size
    n_train, n_val, seq = (12, 4, 32) if tiny else (args.datainf_train, args.datainf_val, 128)
    train = windows(tok, vocab, n_train, seq, "train")
    val = windows(tok, vocab, n_val, seq, "validation", offset=n_train)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(model, tok, "datainf-stream7b", 4 if tiny else 16, Path(tmp),
                      {"modules": "attention"})
        plain_pass(ctx, val.subset([0]))  # warm-up
        t_plain, m_plain, _ = measure(dev, lambda: (plain_pass(ctx, train), plain_pass(ctx, val)))
        est = get_registry().build("estimator", "datainf", {"mode": "streaming"})
        seconds, peak, influence = measure(dev, lambda: est.influence(ctx, train, val))
        record = ctx.run_dir.manifest["datainf"]["train"]
    layers = model.config.num_hidden_layers
    full_layers = known_config(SHAPES["mistral-7b"])["num_hidden_layers"]
    # extrapolated: time ∝ blocks, and ∝ the sequences the passes read (validation once, train 3×)
    projected = seconds * full_layers / layers * (50 + 3 * 300) / (n_val + 3 * n_train)
    return {"model": "mistral-7b, no adapter, q/k/v/o of every block", "dtype": "bfloat16",
            "layers": layers, "n_train": n_train, "n_validation": n_val, "seq_len": seq,
            "seconds": round(seconds, 2), "seconds_per_block": round(seconds / layers, 3),
            "projected_32_blocks_300x50_s": round(projected, 1),
            "plain_pass_s": round(t_plain, 2), "x_plain_pass": round(seconds / t_plain, 2),
            "peak_gib": round(peak, 2), "plain_pass_peak_gib": round(m_plain, 2),
            "partitions": record["plan"]["P"], "norm_branches": record["norm_branches"],
            "paper_seconds_per_block": PAPER_DATAINF_SECONDS_PER_LAYER,
            "paper_whole_model_s": round(PAPER_DATAINF_SECONDS_PER_LAYER * full_layers, 1),
            "goal": "projected_32_blocks_300x50_s < 600 on one H200",
            "goal_met": projected < 600, "finite": bool(torch.isfinite(influence).all())}


def phase_ekfac_qwen(args) -> dict:
    """EK-FAC at the Qwen2.5-0.5B and -1.5B shapes (float32, full dimension, every linear module of
    every block), 64 training × 1 query sequences of 512 tokens: per-stage seconds and peak memory,
    with the published H200 anchors (``QWEN_ANCHORS_S``) alongside."""
    rows = [qwen_row(shape, args) for shape in ("qwen2.5-0.5b", "qwen2.5-1.5b")]
    return {"rows": rows, "table": qwen_table(rows)}


def qwen_row(shape: str, args) -> dict:
    """One shape of :func:`phase_ekfac_qwen`: a plain training pass (the floor) and EK-FAC's stages."""
    dev = torch.device(args.device)
    tiny = args.scale == "tiny"
    n_train, n_query, seq = (8, 1, 32) if tiny else (64, 1, 512)
    batch = 4 if tiny else args.qwen_batch
    model = build_model(shape, None, torch.float32, dev, tiny)
    tok = load_tokenizer(args.tokenizer)
    train = windows(tok, model.config.vocab_size, n_train, seq, "train")
    query = windows(tok, model.config.vocab_size, n_query, seq, "query", offset=n_train)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(model, tok, f"{shape}-ekfac", batch, Path(tmp))
        plain_pass(ctx, query)  # warm-up
        t_plain, m_plain, _ = measure(dev, lambda: plain_pass(ctx, train))
        ek = ekfac_phases(ctx, train, query, Path(tmp))
    ek.pop("_groups")
    ek.pop("_influence")
    row = {"model": shape, "dtype": "float32", "layers": model.config.num_hidden_layers,
           "n_train": n_train, "n_query": n_query, "seq_len": seq, "batch": batch,
           "plain_train_pass_s": round(t_plain, 2), "plain_pass_peak_gib": round(m_plain, 2),
           "ekfac": ek, "published_h200_s": QWEN_ANCHORS_S[shape]}
    return row  # the model is freed on return, before the next shape is built


def qwen_table(rows: list[dict]) -> list[str]:
    """The EK-FAC cell as markdown lines: our stage seconds and peak next to the published anchors."""
    names = list(QWEN_ANCHORS_S["qwen2.5-0.5b"])
    lines = ["| shape | covariance+eigh s | correction s | query+score s | total s | peak GiB | "
             + " | ".join(f"{n}, H200 s" for n in names) + " |",
             "|---" * (6 + len(names)) + "|"]
    for r in rows:
        ek = r["ekfac"]
        lines.append(f"| {r['model']} | {ek['covariance_eigh_s']} | {ek['correction_s']} | "
                     f"{ek['query_score_s']} | {ek['seconds']} | {ek['peak_gib']} | "
                     + " | ".join(str(r["published_h200_s"][n]) for n in names) + " |")
    return lines


VIEW_OPS = {"view", "as_strided", "slice", "select", "transpose", "t", "expand", "reshape", "unsqueeze",
            "squeeze", "permute", "detach", "alias", "empty", "empty_strided", "empty_like", "to",
            "_unsafe_view", "unbind", "split", "narrow", "lift_fresh", "_reshape_alias", "flatten",
            "contiguous", "resolve_conj", "resolve_neg", "item", "_local_scalar_dense"}


def launches(prof, device: torch.device) -> int:
    """Device kernels a profiled region launched (on a CPU: leaf aten operators that compute,
    i.e. not views or no-op casts; a proxy for the kernels the same code launches on a GPU)."""
    from torch.autograd import DeviceType

    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    return sum(1 for e in prof.events() if not e.cpu_children and e.name.startswith("aten::")
               and e.name[6:] not in VIEW_OPS)


def phase_profile(args) -> dict:
    """Where EK-FAC's fit spends its time beyond the two passes: ``torch.profiler`` over a plain
    training pass and the covariance and correction stages of the SmolLM2 shape (bf16): the top
    operators by device time (CPU time without a GPU) and the kernels launched per batch, since
    at this shape a stage that launches many small kernels per module is bound by launches."""
    from torch.profiler import ProfilerActivity, profile

    from layerif_core.estimators.factors import fit_eigen, fit_lambda, module_groups, open_store

    dev = torch.device(args.device)
    tiny = args.scale == "tiny"
    model = build_model("smollm2-135m", None, torch.bfloat16, dev, tiny)
    tok = load_tokenizer(args.tokenizer)
    n, seq = (8, 32) if tiny else (64, 512)
    train = windows(tok, model.config.vocab_size, n, seq, "train")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(model, tok, "profile", 4 if tiny else 16, Path(tmp))
        batches = train.num_batches(ctx.batch_size)
        est = get_registry().build("estimator", "ekfac")
        store, groups = open_store(ctx, train, est.options), module_groups(ctx, train)
        plain_pass(ctx, train)  # warm-up
        for stage, fn in (("plain_training_pass", lambda: plain_pass(ctx, train)),
                          ("covariance_eigh", lambda: fit_eigen(ctx, train, est.options, store, groups)),
                          ("correction", lambda: fit_lambda(ctx, train, est.options, store, groups))):
            with profile(activities=activities) as prof:
                seconds, _, _ = measure(dev, fn)
            table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
            out[stage] = {"seconds": round(seconds, 2),
                          "launches_per_batch": launches(prof, dev) // batches,
                          "top_ops": table.splitlines()}
    return out


def load_tokenizer(path: str | None):
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def run_phases(args) -> dict:
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "scale": args.scale, "torch": torch.__version__, "phases": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = args.scale == "tiny"
    throughput: dict[str, float] = {}
    todo = {
        "throughput": lambda: phase_throughput(args),
        "smollm2": lambda: [bench_shape("smollm2-135m", dt, None, 16 if tiny else n, 4 if tiny else q,
                                        32 if tiny else 512, 4 if tiny else 16, args, throughput)
                            for dt, n, q in ((torch.float32, 256, 32), (torch.bfloat16, 256, 32))],
        "tinyllama": lambda: bench_shape("tinyllama-1.1b", torch.float32, args.tinyllama_layers,
                                         16 if tiny else 128, 4 if tiny else 16, 32 if tiny else 512,
                                         4 if tiny else 8, args, throughput),
        "mistral7b": lambda: bench_shape("mistral-7b", torch.bfloat16, args.mistral_layers,
                                         16 if tiny else 256, 4 if tiny else 32, 32 if tiny else 512,
                                         4 if tiny else 8, args, throughput),
        "datainf7b": lambda: phase_datainf(args),
        "datainf_stream7b": lambda: phase_datainf_stream(args),
        "profile": lambda: phase_profile(args),
        "ekfac_qwen": lambda: phase_ekfac_qwen(args),
    }
    for name in args.phases:
        start = time.perf_counter()
        try:
            res = todo[name]()
        except Exception as exc:  # one failed phase must not lose the others' numbers
            res = {"error": f"{type(exc).__name__}: {exc}"}
        if name == "throughput" and "matmul_flops_per_s" in res:
            throughput.update(res["matmul_flops_per_s"])
            if args.record:
                res["recorded"] = record_device(res, results["device"], Path(args.record))
        results["phases"][name] = {"wall_s": round(time.perf_counter() - start, 1), "result": res}
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(json.dumps({name: results["phases"][name]}, default=str), flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench-gpu-out"))
    p.add_argument("--phases", nargs="+", default=["throughput", "smollm2", "tinyllama", "mistral7b",
                                                   "datainf7b", "datainf_stream7b"],
                   help="Any of: throughput smollm2 tinyllama mistral7b datainf7b datainf_stream7b "
                        "profile ekfac_qwen.")
    p.add_argument("--tokenizer", default=None, help="A local tokenizer directory (SmolLM2's); "
                   "without it, random token ids.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--record", default=None, metavar="DEVICES.json",
                   help="Write the throughput phase's numbers as this device's row of the plan's "
                        "device table (layerif_core/devices.json, or a copy of it).")
    p.add_argument("--tinyllama-layers", type=int, default=8)
    p.add_argument("--mistral-layers", type=int, default=8, help="Blocks of Mistral-7B (of 32).")
    p.add_argument("--budget-gb", type=float, default=None, help="EK-FAC's memory_budget_gb.")
    p.add_argument("--datainf-layers", type=int, default=32,
                   help="Blocks of Mistral-7B in datainf_stream7b (fewer: extrapolated to 32).")
    p.add_argument("--datainf-train", type=int, default=300,
                   help="Training sequences of datainf_stream7b (fewer: extrapolated to 300).")
    p.add_argument("--datainf-val", type=int, default=50,
                   help="Validation sequences of datainf_stream7b (fewer: extrapolated to 50).")
    p.add_argument("--qwen-batch", type=int, default=8,
                   help="Sequences per batch of ekfac_qwen (64 training sequences in all).")
    return p.parse_args(argv)


def run(quick: bool) -> dict:
    """``python -m benchmarks`` entry: on a machine without a GPU, the tiny-scale script check."""
    args = parse(["--scale", "tiny" if quick or not torch.cuda.is_available() else "full",
                  "--out", tempfile.mkdtemp()])
    return run_phases(args)


if __name__ == "__main__":
    run_phases(parse())
