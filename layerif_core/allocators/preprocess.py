"""Pre-processing of layer scores before allocation (architecture §5): Savitzky–Golay smoothing over the
layer index, min-max normalisation, and the ablation ``bottom`` (chosen layers moved to the lowest
score).

The LayerIF authors smooth their per-layer influence sums before allocating *sparsity* (not
experts): the scores are min-maxed to ``[0, 1]`` and filtered with a Savitzky–Golay filter (window
7, polynomial order 3; ``scipy.signal.savgol_filter``), which fits a cubic to every 7 neighbouring
layers by least squares and keeps its value at the centre, so one noisy layer does not decide its
own allocation. Their released Mistral-7B file ``IF-300-96-smoothed`` is this filter applied to
``IF-300-96`` block by block (within 5e-5). They min-max the magnitude of their helpful mass (a
negative number in their sign), which is layerif's ``helpful_sum`` itself; the min-max here keeps
the sign, so a signed score (``net_sum``) keeps its order. Both steps keep the direction of the
scores (``higher_is_better``).

``bottom`` (an ablation, not the authors' step): the listed layers take the lowest raw score of all
layers, ``S[l] ← min_k S[k]``, before smoothing and normalisation, so only their position in the
order changes (they tie with the layer that was lowest). After a min-max they are at 0; the other
layers keep their min-max values unless a listed layer was the maximum (the span then shrinks to
the next largest, and their normalised values stretch, in the same order). Smoothing comes after
it and spreads the change to the neighbours within its window, as it spreads any layer's score. The
allocation a lowest score gets follows the direction: with ``higher_is_better=False`` (LayerIF's
+VE, where a high S marks an immature layer) the least sparsity.
"""

from __future__ import annotations

import logging

import torch

from layerif_core.config import PostprocessSpec
from layerif_core.errors import ConfigError
from layerif_core.results import LayerScores

log = logging.getLogger("layerif")


def minmax(values: torch.Tensor) -> torch.Tensor:
    """``(v − min v) / (max v − min v)``; all zeros when the scores are constant. float64 ``[L]``."""
    v = values.double()
    span = v.max() - v.min()
    return torch.zeros_like(v) if span == 0 else (v - v.min()) / span


def savgol_window(n_layers: int, window: int, order: int) -> tuple[int, int]:
    """The window and order actually used: the window at most ``n_layers`` and odd, the order below it."""
    w = min(window, n_layers)
    if w % 2 == 0:
        w -= 1
    return w, min(order, w - 1)


def savgol_smooth(values: torch.Tensor, window: int = 7, order: int = 3) -> torch.Tensor:
    """LayerIF's smoothing: ``savgol_filter(minmax(S), window, order)`` over the layer index."""
    from scipy.signal import savgol_filter

    w, p = savgol_window(len(values), window, order)
    if (w, p) != (window, order):
        log.warning("Savitzky-Golay smoothing over %d layers: window %d, order %d (asked %d, %d)",
                    len(values), w, p, window, order)
    x = minmax(values.double()).numpy()
    return torch.from_numpy(savgol_filter(x, w, p).copy())


def to_bottom(values: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """``values`` with ``values[l] = min_k values[k]`` for every ``l`` in ``layers``, the others
    unchanged. float64 ``[L]``."""
    v = values.double().clone()
    outside = [i for i in layers if i >= len(v)]
    if outside:
        raise ConfigError(f"scorer.postprocess.bottom names layer {outside[0]}, but the scores have "
                          f"{len(v)} layers (0 to {len(v) - 1}); list layers of this model.")
    if layers:
        v[layers] = v.min()
    return v


def postprocess(scores: LayerScores, spec: PostprocessSpec) -> LayerScores:
    """Apply ``spec`` (the ``bottom`` layers moved to the lowest raw score, then smoothing, then
    normalisation) to ``scores``; the raw values go to details."""
    if not spec.smooth and spec.normalize == "none" and not spec.bottom:
        return scores
    values = to_bottom(scores.values, spec.bottom)
    if spec.smooth:
        values = savgol_smooth(values, spec.window, spec.order)
    if spec.normalize == "minmax":
        values = minmax(values)
    details = {**scores.details, "raw_values": [float(x) for x in scores.values.tolist()],
               "postprocess": spec.model_dump()}
    return LayerScores(values.float(), scores.higher_is_better, scores.scorer, details)
