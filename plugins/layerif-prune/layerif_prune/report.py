"""What pruning achieved, measured on the weights (the saved files when the model is saved), and
its plot: target versus achieved sparsity per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from layerif_core.atomic import atomic_dir
from layerif_core.errors import ArtifactError
from layerif_core.layers import LayerMap
from layerif_core.plotting import save_figure


def save_model(model: torch.nn.Module, tokenizer: Any, target: Path) -> Path:
    """``save_pretrained`` (safetensors) of model and tokenizer into ``target``, atomically."""
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target


def zeros_in_saved(model_dir: Path, layer_map: LayerMap) -> dict[str, tuple[int, int]]:
    """``(zeros, numel)`` of each tracked module's weight found in ``model_dir`` under its name
    (a model whose saving renames some weights leaves those out; the caller measures them in memory)."""
    wanted = {f"{tm.name}.weight": tm.name for tm in layer_map.modules()}
    found: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key in wanted:
                    t = f.get_tensor(key)
                    found[wanted[key]] = (int((t == 0).sum()), t.numel())
    if not found:
        raise ArtifactError(f"the saved model in '{model_dir}' holds none of the pruned weights under "
                            "the model's names; load it and check its state dict.")
    return found


def zeros_in_memory(layer_map: LayerMap) -> dict[str, tuple[int, int]]:
    """``(zeros, numel)`` of each tracked module's weight in memory."""
    return {tm.name: (int((tm.module.weight == 0).sum()), tm.module.weight.numel())
            for tm in layer_map.modules()}


def achieved(layer_map: LayerMap, zeros: dict[str, tuple[int, int]], target: list[float]) -> dict[str, Any]:
    """Achieved sparsity per module, per layer (zeros over weights of the layer) and overall, and the
    overall target (the per-layer targets weighted by the layers' weights)."""
    per_layer, wanted = [], 0.0
    for layer, share in zip(layer_map.layers, target, strict=True):
        z = sum(zeros[tm.name][0] for tm in layer)
        n = sum(zeros[tm.name][1] for tm in layer)
        per_layer.append(z / n if n else 0.0)
        wanted += share * n
    total_z = sum(z for z, _ in zeros.values())
    total_n = sum(n for _, n in zeros.values())
    return {"overall": total_z / total_n, "target_overall": wanted / total_n, "per_layer": per_layer,
            "per_module": {name: z / n for name, (z, n) in zeros.items()}}


def plot_sparsity(target: list[float], measured: list[float], path: Path, title: str) -> Path:
    """Bars of the target sparsity per layer with the achieved sparsity as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(target) + 2), 3.6))
    x = list(range(len(target)))
    ax.bar(x, target, color="tab:blue", alpha=0.5, label="target (allocation)")
    ax.plot(x, measured, "o", color="tab:red", markersize=4, label="achieved (saved weights)")
    ax.set_xlabel("layer")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
