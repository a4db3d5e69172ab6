"""Plots of layer scores (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path

from layerif_core.artifacts import atomic_path
from layerif_core.results import LayerScores


def plot_scores(scores: dict[str, LayerScores], path: Path, title: str = "Layer scores") -> Path:
    """One panel per task, side by side: the score of each layer over the layer index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(scores)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.8), squeeze=False, sharey=False)
    for ax, (task, s) in zip(axes[0], scores.items(), strict=True):
        values = s.values.tolist()
        ax.bar(range(len(values)), values, color="tab:red" if not s.higher_is_better else "tab:green")
        better = "higher" if s.higher_is_better else "lower"
        detail = " / ".join(str(s.details[k]) for k in ("estimator", "aggregator") if k in s.details)
        ax.set_title(f"{task}\n{s.scorer}{' (' + detail + ')' if detail else ''}", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"score ({better} = better trained)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
