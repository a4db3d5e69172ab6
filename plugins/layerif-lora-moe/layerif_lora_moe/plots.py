"""Training curves of LoRA-MoE as PNG: the losses, and the expert usage of every routed layer."""

from __future__ import annotations

from pathlib import Path

from layerif_core.plotting import save_figure
from layerif_lora_moe.train import TrainLog


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(log: TrainLog, path: Path, title: str = "LoRA-MoE training") -> Path:
    """Training loss and load-balancing loss per step, validation loss at its steps (with early
    stopping also the held-out loss and the step whose weights were kept)."""
    plt = _plt()
    fig, (ax, ax_aux) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in log.steps]
    ax.plot(steps, [r["loss"] for r in log.steps], label="train (token CE)", lw=1)
    if log.validation:
        ax.plot([r["step"] for r in log.validation], [r["loss"] for r in log.validation], "o-",
                label="validation", color="tab:red")
    if log.holdout:
        ax.plot([r["step"] for r in log.holdout], [r["loss"] for r in log.holdout], "s-",
                label="held out (early stopping)", color="tab:green")
    if log.best_step is not None:
        ax.axvline(log.best_step, color="grey", ls="--", lw=1, label=f"weights kept (step {log.best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_aux.plot(steps, [r["aux"] for r in log.steps], color="tab:purple", lw=1)
    ax_aux.set_xlabel("step")
    ax_aux.set_ylabel("load-balancing loss (sum over modules)")
    ax_aux.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_usage(log: TrainLog, experts: list[int], path: Path) -> Path:
    """Left: share of each expert per layer over the whole run (stacked bars). Right: per layer, the
    load of its busiest expert relative to balanced (max_e f_e · n_l; 1 = balanced) over steps."""
    plt = _plt()
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8))
    layers = sorted({lyr for u in log.usage for lyr in u["layers"]})
    totals = {lyr: [0.0] * experts[lyr] for lyr in layers}
    for u in log.usage:
        for lyr, frac in u["layers"].items():
            totals[lyr] = [a + b for a, b in zip(totals[lyr], frac, strict=True)]
    for lyr in layers:
        s = sum(totals[lyr]) or 1.0
        bottom = 0.0
        for e, v in enumerate(totals[lyr]):
            ax.bar(lyr, v / s, bottom=bottom, color=plt.cm.tab20(e % 20), edgecolor="white", lw=0.3)
            bottom += v / s
    ax.set_xlabel("layer")
    ax.set_ylabel("share of top-k assignments")
    ax.set_title("expert usage per layer (colour = expert)")
    for lyr in layers:
        pts = [(u["step"], max(u["layers"][lyr]) * experts[lyr]) for u in log.usage
               if lyr in u["layers"] and sum(u["layers"][lyr]) > 0]
        if pts:
            ax_t.plot(*zip(*pts, strict=True), lw=0.8, label=str(lyr))
    ax_t.axhline(1.0, color="black", lw=0.5, ls="--")
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("max expert load / balanced")
    ax_t.set_title("load imbalance per layer")
    if 0 < len(layers) <= 12:
        ax_t.legend(fontsize=7, ncol=2, title="layer")
    return save_figure(fig, path)
