"""Pre-processing of layer scores before allocation (architecture §5): Savitzky–Golay smoothing over the
layer index and min-max normalisation.

The LayerIF authors smooth their per-layer influence sums before allocating *sparsity* (not
experts): the scores are min-maxed to ``[0, 1]`` and filtered with a Savitzky–Golay filter (window
7, polynomial order 3; ``scipy.signal.savgol_filter``), which fits a cubic to every 7 neighbouring
layers by least squares and keeps its value at the centre, so one noisy layer does not decide its
own allocation. Their released Mistral-7B file ``IF-300-96-smoothed`` is this filter applied to
``IF-300-96`` block by block (within 5e-5). They min-max the magnitude of their helpful mass (a
negative number in their sign), which is layerif's ``helpful_sum`` itself; the min-max here keeps
the sign, so a signed score (``net_sum``) keeps its order. Both steps keep the direction of the
scores (``higher_is_better``).
"""

from __future__ import annotations

import logging

import torch

from layerif_core.config import PostprocessSpec
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


def postprocess(scores: LayerScores, spec: PostprocessSpec) -> LayerScores:
    """Apply ``spec`` (smoothing, then normalisation) to ``scores``; the raw values go to details."""
    if not spec.smooth and spec.normalize == "none":
        return scores
    values = scores.values.double()
    if spec.smooth:
        values = savgol_smooth(values, spec.window, spec.order)
    if spec.normalize == "minmax":
        values = minmax(values)
    details = {**scores.details, "raw_values": [float(x) for x in scores.values.tolist()],
               "postprocess": spec.model_dump()}
    return LayerScores(values.float(), scores.higher_is_better, scores.scorer, details)
