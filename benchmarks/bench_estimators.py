"""Influence estimators: wall time and peak memory against the floor of plain forward+backward passes.

For each estimator the floor is the time of the same number of plain forward+backward passes
(parameter gradients on, as in training) measured in the same run: EK-FAC does 2 fit passes and one
score pass over train plus one query pass, so its floor is ``3 × train + 1 × query``; K-FAC and
``exact`` ``2 × train + query``; ``grad_dot``/``grad_cosine`` ``train + query``. Peak memory is the
increase of the process RSS (CPU, sampled) or of ``torch.cuda.max_memory_allocated`` (GPU) over the
value before the call, for the whole run and for the query + score passes alone (curvature already
fitted); the plain forward+backward of one train pass is measured the same way.
The PyPI package ``kronfluence`` (EK-FAC, true Fisher, its damping heuristic, per-module pairwise
scores) is run as a reference on SmolLM2 when it is importable, with our loss, our true-Fisher label
draws, the same batches and the same tracked modules: its wall time and peak memory next to ours,
and the agreement of its ``I[l, i]`` and ``helpful_sum`` ``S[l]`` with our ``ekfac``'s.
Each row also gives the FLOP floor (:mod:`layerif_core.cost`: the matmul FLOPs the estimator cannot
avoid over the measured matmul throughput in the model's dtype) and the time over it; and EK-FAC on
SmolLM2 in bfloat16 is compared with float32 on WikiText-2 (Spearman of S, goal ≥ 0.99).
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from layerif_core.aggregators import HarmfulSum, HelpfulSum, NetSum
from layerif_core.artifacts import RunDir
from layerif_core.config import ModelSpec, RunConfig
from layerif_core.cost import ekfac_flops, matmul_flops_per_second
from layerif_core.data import Batch, pad_rows
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
                layers: dict, batch_size: int, workdir: Path,
                reference_query_batch: int | None = None, train_source: str = "bundled:capitals"
                ) -> tuple[list[dict], dict | None]:
    """One row per estimator; with ``reference_query_batch`` also kronfluence's EK-FAC compared with
    ours (its query gradients are preconditioned that many at a time). The query is the capitals
    task; a train set of another task (``train_source``) has helpful and harmful examples, so
    both ``helpful_sum`` and ``harmful_sum`` rank layers."""
    cfg = RunConfig.model_validate({
        "name": label, "output_dir": str(workdir), "batch_size": batch_size, "layers": layers,
        "tasks": [{"name": "capitals",
                   "train": {"source": train_source, "limit": n_train, "max_length": 128},
                   "validation": {"source": "bundled:capitals", "split": "validation",
                                  "limit": n_query, "max_length": 128}}]})
    ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
    train, query = load_task_splits(ctx, cfg.tasks[0])
    device = ctx.device
    plain_pass(ctx, train)  # warm-up
    t_train, m_train, _ = timed(device, lambda: plain_pass(ctx, train))
    t_query, _, _ = timed(device, lambda: plain_pass(ctx, query))
    rows, ekfac = [], None
    reg = get_registry()
    rate = matmul_flops_per_second(device, ctx.dtype, seconds=0.5)
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
        flop_floor = estimator_flop_floor(ctx, train, query, name, rate)
        rows.append({"model": label, "estimator": name, "n_train": len(train), "n_query": len(query),
                     "seconds": round(seconds, 3), "floor_seconds": round(floor, 3),
                     "ratio": round(seconds / floor, 2),
                     "flop_floor_seconds": None if flop_floor is None else round(flop_floor, 3),
                     "ratio_flop_floor": None if flop_floor is None else round(seconds / flop_floor, 2),
                     "peak_mib": round(peak, 1),
                     "score_peak_mib": round(score_peak, 1),
                     "plain_fb_peak_mib": round(m_train, 1),
                     "finite": bool(torch.isfinite(influence).all())})
        print(rows[-1], flush=True)
        if name == "ekfac":
            ekfac = {"influence": influence.cpu(), "dampings": est.dampings, "seconds": round(seconds, 3),
                     "peak_mib": round(peak, 1)}
    if reference_query_batch is None or ekfac is None:
        return rows, None
    reference = kronfluence_reference(ctx, train, query, ekfac, reference_query_batch,
                                      workdir / label / "kronfluence")
    print({"kronfluence": reference}, flush=True)
    return rows, reference


def estimator_flop_floor(ctx, train, query, name: str, rate: float) -> float | None:
    """Seconds of the matmul FLOPs ``name`` cannot avoid (:mod:`layerif_core.cost`) at ``rate``;
    None for estimators without a FLOP model (exact, lissa, grad_cosine)."""
    from layerif_core.estimators.factors import module_groups

    if name not in ("ekfac", "kfac", "grad_dot"):
        return None
    seq = max(len(ids) for ids in train.input_ids)  # padded length: the passes run at it
    groups = module_groups(ctx, train)
    return ekfac_flops(ctx.model, groups, len(train), len(query), seq, name)["total"] / rate


def bf16_against_float32(quick: bool, workdir: Path, sizes: tuple[int, int, int] | None = None
                         ) -> dict:
    """SmolLM2-135M on WikiText-2 windows (train: test split, query: validation split), EK-FAC over
    every linear module with the model in bfloat16 and in float32: does bf16 rank the layers the
    same (Spearman of ``helpful_sum`` S, goal ≥ 0.99)?"""
    n_train, n_query, length = sizes or ((8, 2, 32) if quick else (32, 8, 64))
    out: dict[str, Any] = {"n_train": n_train, "n_query": n_query, "seq_len": length}
    influences = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model(ModelSpec(source="embedded:smollm2-135m", device="cpu", dtype=dtype))
        cfg = RunConfig.model_validate({
            "name": f"bf16-{dtype}", "output_dir": str(workdir), "batch_size": 4,
            "tasks": [{"name": "wikitext2",
                       "train": {"source": "bundled:wikitext2", "split": "test", "limit": 400,
                                 "max_length": length, "pack": True},
                       "validation": {"source": "bundled:wikitext2", "split": "validation",
                                      "limit": 200, "max_length": length, "pack": True}}]})
        ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tok)
        train, query = load_task_splits(ctx, cfg.tasks[0])
        train, query = train.subset(list(range(n_train))), query.subset(list(range(n_query)))
        start = time.perf_counter()
        influences[dtype] = get_registry().build("estimator", "ekfac").influence(ctx, train, query)
        out[f"{dtype}_seconds"] = round(time.perf_counter() - start, 1)
        del model
    out.update(agreement(influences["bfloat16"].cpu(), influences["float32"].cpu()))
    out["goal"] = "spearman_S_helpful_sum >= 0.99"
    return out


def kronfluence_available() -> bool:
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        return False
    return True


def as_dataset(split) -> list[tuple[list[int], list[int]]]:
    """``split`` as a list of ``(input_ids, labels)`` for kronfluence's DataLoaders."""
    return list(zip(split.input_ids, split.labels, strict=True))


def loader_kwargs(pad_id: int):
    """kronfluence's DataLoader options (one set for the query and train loaders alike): batches
    right-padded by :func:`pad_rows`, as our own batches are, as a dict of tensors."""
    from kronfluence.utils.dataset import DataLoaderKwargs

    def collate(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        b = pad_rows([ids for ids, _ in rows], [lab for _, lab in rows], pad_id, list(range(len(rows))))
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels}

    return DataLoaderKwargs(collate_fn=collate)


def kronfluence_task(module_names: list[str], seed: int):
    """Our loss as a kronfluence ``Task``: the summed token cross-entropy of each sequence, summed over
    the batch (architecture §4); ``sample=True`` draws the labels with :func:`sample_labels` and our seed, so
    the true-Fisher labels of every example are the very ones our estimator draws."""
    from kronfluence.task import Task

    def as_batch(batch: dict[str, torch.Tensor]) -> Batch:
        return Batch(batch["input_ids"], batch["attention_mask"], batch["labels"],
                     torch.arange(batch["input_ids"].shape[0]))

    class LayerifTask(Task):
        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            return sequence_losses(model, as_batch(batch), sample_seed=seed if sample else None).sum()

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return sequence_losses(model, as_batch(batch)).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return module_names

        def get_attention_mask(self, batch) -> torch.Tensor:
            return batch["attention_mask"]

    return LayerifTask()


def kronfluence_influence(ctx, model, train, query, query_batch_size: int, workdir: Path,
                          fisher: str = "true"
                          ) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """``I[l, i]`` from kronfluence: EK-FAC, the ``fisher`` (true by default), its damping heuristic
    (``damping_factor=None``: 0.1 × mean EK-FAC eigenvalue per module), per-module pairwise scores
    ``[n_query, n_train]`` summed over the query and over the modules of each layer. ``model`` is a
    copy of ``ctx.model`` (kronfluence wraps its linear modules in place). Also returns kronfluence's
    damping per module and the seconds of its two stages."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.constants import LAMBDA_MATRIX_NAME, NUM_LAMBDA_PROCESSED

    modules = ctx.layer_map.modules()
    task = kronfluence_task([tm.name for tm in modules], ctx.seed)
    model = prepare_model(model, task)
    analyzer = Analyzer("layerif-reference", model, task, cpu=ctx.device.type == "cpu",
                        disable_tqdm=True, output_dir=str(workdir))
    factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=fisher == "empirical",
                                  covariance_max_examples=None, lambda_max_examples=None)
    kwargs = loader_kwargs(ctx.pad_id)
    start = time.perf_counter()
    analyzer.fit_all_factors("ekfac", dataset=as_dataset(train), per_device_batch_size=ctx.batch_size,
                             factor_args=factor_args, dataloader_kwargs=kwargs)
    fitted = time.perf_counter()
    score_args = ScoreArguments(damping_factor=None, compute_per_module_scores=True)
    analyzer.compute_pairwise_scores(
        "pairwise", "ekfac", query_dataset=as_dataset(query), train_dataset=as_dataset(train),
        per_device_query_batch_size=query_batch_size, per_device_train_batch_size=ctx.batch_size,
        score_args=score_args, dataloader_kwargs=kwargs)
    stages = {"factors_seconds": round(fitted - start, 2),
              "pairwise_scores_seconds": round(time.perf_counter() - fitted, 2)}
    scores = analyzer.load_pairwise_scores("pairwise")
    influence = torch.zeros(len(ctx.layer_map), len(train), dtype=torch.float64)
    for tm in modules:
        influence[tm.layer] += scores[tm.name].double().sum(dim=0)
    lam = analyzer.load_lambda_matrices("ekfac")
    damping = {tm.name: 0.1 * float((lam[LAMBDA_MATRIX_NAME][tm.name].double()
                                     / lam[NUM_LAMBDA_PROCESSED][tm.name].double()).mean())
               for tm in modules}
    return influence.float(), damping, stages


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float | None]:
    """Rank and value agreement of two ``[L, N]`` influence matrices and of their per-layer scores.

    An S that is 0 in every layer (``harmful_sum`` when no train example is harmful) has no rank
    correlation (None); the other aggregators carry the comparison of S."""
    from scipy.stats import pearsonr, spearmanr

    def rho(agg) -> float | None:
        a, b = agg(ours).numpy(), agg(theirs).numpy()
        if a.std() == 0 or b.std() == 0:
            return None
        return round(float(spearmanr(a, b)[0]), 5)

    a, b = ours.flatten().double().numpy(), theirs.flatten().double().numpy()
    rel = (ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()
    return {"spearman_S_helpful_sum": rho(HelpfulSum()), "spearman_S_harmful_sum": rho(HarmfulSum()),
            "spearman_S_net_sum": rho(NetSum()),
            "harmful_share_I": round(float((ours < 0).double().mean()), 4),
            "pearson_I": round(float(pearsonr(a, b)[0]), 6),
            "spearman_I": round(float(spearmanr(a, b)[0]), 6),
            "max_abs_diff_I_over_max_abs_I": float(f"{float(rel):.3g}")}


def kronfluence_reference(ctx, train, query, ours: dict, query_batch_size: int, workdir: Path) -> dict:
    """Run kronfluence on a copy of the model and compare its ``I`` and ``S`` with our ``ekfac``."""
    if not kronfluence_available():
        return {"available": False, "note": "kronfluence not importable (nox -s bench installs it); "
                                            "comparison not run"}
    import kronfluence

    model = copy.deepcopy(ctx.model)  # freed on return
    seconds, peak, (theirs, damping, stages) = timed(
        ctx.device, lambda: kronfluence_influence(ctx, model, train, query, query_batch_size, workdir))
    ours_damping = ours["dampings"]
    damp_rel = max(abs(ours_damping[k] - v) / v for k, v in damping.items())
    return {"available": True, "version": kronfluence.__version__, "n_train": len(train),
            "n_query": len(query), "modules": len(ctx.layer_map.modules()),
            "query_batch_size": query_batch_size,
            "seconds": round(seconds, 2), **stages, "peak_mib": round(peak, 1),
            "ours_seconds": ours["seconds"], "ours_peak_mib": ours["peak_mib"],
            "time_ratio_kronfluence_over_ours": round(seconds / ours["seconds"], 2),
            "damping_max_rel_diff": float(f"{damp_rel:.3g}"),
            **agreement(ours["influence"], theirs)}


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
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_rows, _ = bench_model(
            "tiny-llama", tiny, tok, 16 if quick else 64, 4 if quick else 16,
            {**cheap, "exact": {}, "lissa": {"depth": 10 if quick else 100, "power_iterations": 5}},
            {"modules": "attention"}, 8, work)
        smol_rows, reference = bench_model(
            "smollm2-135m", smol, tok, 16 if quick else 128, 4 if quick else 32, cheap,
            {"regex": "o_proj"} if quick else {"modules": "all"}, 8, work,
            reference_query_batch=4 if quick else 8, train_source="bundled:arithmetic")
        rows = tiny_rows + smol_rows
        bf16 = bf16_against_float32(quick, work / "bf16")
        print({"bf16_vs_float32": bf16}, flush=True)
    ek = [r for r in rows if r["estimator"] == "ekfac" and r["model"] == "smollm2-135m"]
    return {"table": rows, "kronfluence": reference, "bf16_vs_float32": bf16, "device": device,
            "goal": "ekfac ratio <= 1.5 on smollm2-135m",
            "ekfac_smollm2_ratio": ek[0]["ratio"] if ek else None}
