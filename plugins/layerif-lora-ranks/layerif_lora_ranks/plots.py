"""The plot of a rank allocation: layer scores and LoRA rank per layer, side by side."""

from __future__ import annotations

from pathlib import Path

from layerif_core.plotting import save_figure
from layerif_core.results import Allocation, LayerScores


def plot_ranks(scores: LayerScores, allocation: Allocation, path: Path, title: str) -> Path:
    """Left: the scores per layer; right: the rank of each module type per layer, with the uniform
    rank of the same parameter count dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    values = scores.values.tolist()
    left.bar(range(len(values)), values, color="tab:green" if scores.higher_is_better else "tab:red")
    better = "higher" if scores.higher_is_better else "lower"
    left.set_title(f"scores: {scores.scorer}", fontsize=10)
    left.set_xlabel("layer")
    left.set_ylabel(f"score ({better} = better trained)")
    ranks = allocation.details["ranks"]
    uniform = allocation.details["uniform_rank"]
    if not allocation.details.get("per_module_type"):  # one rank per layer for every type
        ranks = {"rank": allocation.values}
    types = list(ranks)
    width = 0.8 / len(types)
    for j, t in enumerate(types):
        x = [i - 0.4 + width * (j + 0.5) for i in range(len(ranks[t]))]
        right.bar(x, ranks[t], width=width, label=t if len(types) > 1 else "rank")
    levels = sorted(set(uniform.values()))
    for r in levels:
        right.axhline(r, color="black", linestyle="--", linewidth=1)
    right.set_title(f"LoRA rank per layer (dashed: uniform {', '.join(map(str, levels))})", fontsize=10)
    right.set_xlabel("layer")
    right.set_ylabel("rank")
    if len(types) > 1:
        right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)
