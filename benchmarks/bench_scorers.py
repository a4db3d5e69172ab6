"""Baseline scorers on SmolLM2-135M: time of each scorer against its floor, the accuracy of the
HT-SR power-law fit on synthetic spectra, and how the scorers' layer rankings agree.

- ``htsr_alpha``: all 30 × 7 matrices (eigendecomposition + KS search), per ``xmin`` mode; the floor
  is the eigendecompositions alone.
- ``owl_outlier`` and ``block_influence``: calibration forward pass with hooks; floor: the same
  forward pass without hooks. ``gradient_norm``: floor is forward+backward of the summed loss.
- Fit accuracy: α̂ − α over seeds for spectra drawn from a power law (tail of n eigenvalues above
  λ_min = 1 plus a bulk of n/5 below it), KS search and peak window.
- Agreement: Spearman ρ of the worse-ness of every pair of scorers (and ``layerif`` with grad_dot).

Quick: 16 calibration examples, 8 seeds of n = 1000; full: 128 examples, 30 seeds of n = 2000.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _fit_accuracy(quick: bool) -> list[dict]:
    from layerif_core.scorers.htsr import HTSROptions, fit_power_law

    n, seeds = (1000, 8) if quick else (2000, 30)
    rows = []
    for alpha in (2.0, 3.0, 4.0):
        for mode in ("ks", "peak"):
            errors = []
            for seed in range(seeds):
                gen = torch.Generator().manual_seed(seed)
                u = torch.rand(n, generator=gen, dtype=torch.float64)
                tail = (1 - u) ** (-1 / (alpha - 1))
                bulk = 0.05 + 0.95 * torch.rand(n // 5, generator=gen, dtype=torch.float64)
                errors.append(fit_power_law(torch.cat([tail, bulk]), HTSROptions(xmin=mode)).alpha - alpha)
            e = torch.tensor(errors)
            rows.append({"what": "fit", "alpha": alpha, "xmin": mode, "n_tail": n, "seeds": seeds,
                         "mean_error": float(e.mean()), "mean_abs_error": float(e.abs().mean()),
                         "max_abs_error": float(e.abs().max()),
                         "theory_std": (alpha - 1) / n ** 0.5})
    return rows


def run(quick: bool) -> dict:
    from layerif_core.compare import ScoreSeries, pairwise_correlations
    from layerif_core.config import ModelSpec, RunConfig
    from layerif_core.losses import sequence_losses
    from layerif_core.models import load_model
    from layerif_core.pipeline import open_run, score_task
    from layerif_core.scorers.calibration import CalibrationOptions, calibration_split
    from layerif_core.scorers.htsr import esd

    n_cal = 16 if quick else 128
    model, tokenizer = load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32"))
    task = {"name": "capitals",
            "train": {"source": "bundled:capitals", "limit": n_cal, "max_length": 128},
            "validation": {"source": "bundled:capitals", "split": "validation", "limit": n_cal,
                           "max_length": 128}}
    out_dir = Path(tempfile.mkdtemp(prefix="bench_scorers_"))

    def ctx_for(name: str, options: dict | None = None, **extra):
        cfg = RunConfig.model_validate({"name": name, "output_dir": str(out_dir), "tasks": [task],
                                        "batch_size": 8, "scorer": {"name": name,
                                                                     "options": options or {}},
                                        **extra})
        return open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)

    base = ctx_for("uniform")
    device = base.device
    spec = base.config.tasks[0]
    train = calibration_split(base, spec, CalibrationOptions(), "train")
    valid = calibration_split(base, spec, CalibrationOptions(), "validation")

    def forward_floor():
        with torch.no_grad():
            for b in train.batches(base.batch_size, base.pad_id):
                b = b.to(device)
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def backward_floor():
        for b in valid.batches(base.batch_size, base.pad_id):
            sequence_losses(model, b.to(device)).sum().backward()
        model.zero_grad(set_to_none=True)

    def eig_floor():
        for tm in base.layer_map.modules():
            esd(tm.weight_matrix(tm.module.weight))

    forward_floor()  # warm-up
    floors = {"forward": min(_timed(forward_floor, device) for _ in range(2)),
              "eigh": min(_timed(eig_floor, device) for _ in range(2)),
              "forward+backward": min(_timed(backward_floor, device) for _ in range(2))}
    plan = [("htsr_alpha", {"xmin": "peak"}, "eigh"), ("htsr_alpha", {"xmin": "ks"}, "eigh"),
            ("owl_outlier", {}, "forward"), ("block_influence", {}, "forward"),
            ("gradient_norm", {}, "forward+backward"), ("random", {}, None)]
    rows, series = [], []
    for name, options, floor in plan:
        ctx = ctx_for(name, options)
        result = {}
        seconds = _timed(lambda ctx=ctx, result=result: result.update(s=score_task(ctx, spec)), device)
        label = name + (f" ({options['xmin']})" if "xmin" in options else "")
        rows.append({"what": "scorer", "scorer": label, "seconds": seconds,
                     "floor": floor or "-", "floor_seconds": floors.get(floor, 0.0),
                     "x_floor": seconds / floors[floor] if floor else None})
        series.append(ScoreSeries(label, "", "capitals", result["s"]))
    # LayerIF with grad_dot; the second aggregator reuses the saved influence matrix
    for aggregator in ("helpful_sum", "net_sum"):
        lif = ctx_for("layerif")
        lif.config.scorer.aggregator.name = aggregator
        lif_result = {}
        lif_seconds = _timed(lambda lif=lif, r=lif_result: r.update(s=score_task(lif, spec)), device)
        rows.append({"what": "scorer", "scorer": f"layerif (grad_dot, {aggregator})",
                     "seconds": lif_seconds, "floor": "-", "floor_seconds": 0.0, "x_floor": None})
        series.append(ScoreSeries(f"layerif {aggregator}", "", "capitals", lif_result["s"]))

    from scipy.stats import spearmanr

    rho = pairwise_correlations(series, spearmanr)
    agreement = {series[i].label: {series[j].label: None if math.isnan(rho[i][j]) else round(rho[i][j], 3)
                                   for j in range(len(series)) if j != i} for i in range(len(series))}
    return {
        "model": "SmolLM2-135M-Instruct", "device": str(device), "calibration_examples": n_cal,
        "matrices": len(base.layer_map.modules()),
        "table": rows + _fit_accuracy(quick),
        "spearman_worseness": agreement,
    }
