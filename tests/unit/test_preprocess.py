"""Score pre-processing: min-max normalisation, LayerIF's Savitzky–Golay smoothing and the `bottom`
ablation, against hand-computed vectors and an independent least-squares fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import make_ctx
from layerif_core.allocators.preprocess import minmax, postprocess, savgol_smooth, savgol_window
from layerif_core.config import PostprocessSpec
from layerif_core.errors import ConfigError
from layerif_core.pipeline import compute_layer_scores
from layerif_core.results import LayerScores


def local_cubic_fit(x: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky–Golay by definition: a least-squares polynomial on each window, read at the centre;
    the first and last windows are read at the edge positions (scipy's mode='interp')."""
    n, h = len(x), window // 2
    out = np.empty(n)
    t = np.arange(window)
    for i in range(n):
        lo = min(max(i - h, 0), n - window)
        coef = np.polyfit(t, x[lo: lo + window], order)
        out[i] = np.polyval(coef, i - lo)
    return out


def test_minmax_by_hand():
    torch.testing.assert_close(minmax(torch.tensor([2.0, 4.0, 6.0, 3.0])),
                               torch.tensor([0.0, 0.5, 1.0, 0.25], dtype=torch.float64))


def test_minmax_of_constant_scores_is_zero():
    assert minmax(torch.full((5,), 3.0)).eq(0).all()


def test_savgol_equals_local_least_squares_on_minmaxed_signed_scores():
    raw = torch.tensor([-5.0, 1.0, 4.0, -2.0, 8.0, 3.0, -7.0, 2.0, 6.0, 0.5, -1.0])
    x = raw.numpy().astype(np.float64)  # signed (net_sum): min-max keeps the order
    x = (x - x.min()) / (x.max() - x.min())
    want = local_cubic_fit(x, 7, 3)
    np.testing.assert_allclose(savgol_smooth(raw, 7, 3).numpy(), want, rtol=1e-10, atol=1e-12)


def test_savgol_window_shrinks_to_the_number_of_layers():
    assert savgol_window(3, 7, 3) == (3, 2)
    assert savgol_window(6, 7, 3) == (5, 3)
    assert savgol_window(32, 7, 3) == (7, 3)
    # a quadratic through 3 points is exact: smoothing 3 layers only min-maxes S
    raw = torch.tensor([3.0, -1.0, 2.0])
    torch.testing.assert_close(savgol_smooth(raw, 7, 3), torch.tensor([1.0, 0.0, 0.75], dtype=torch.float64))


def test_postprocess_keeps_direction_and_raw_values():
    scores = LayerScores(torch.tensor([4.0, 1.0, 2.0, 10.0]), False, "layerif", {"estimator": "x"})
    out = postprocess(scores, PostprocessSpec(normalize="minmax"))
    torch.testing.assert_close(out.values, torch.tensor([1 / 3, 0.0, 1 / 9, 1.0]))
    assert out.higher_is_better is False and out.scorer == "layerif"
    assert out.details["raw_values"] == [4.0, 1.0, 2.0, 10.0] and out.details["estimator"] == "x"
    assert postprocess(scores, PostprocessSpec()) is scores


def test_postprocess_smooth_then_normalize():
    raw = torch.tensor([0.5, 3.0, 1.0, 7.0, 2.0, 2.5, 9.0, 4.0])
    out = postprocess(LayerScores(raw, True, "s"), PostprocessSpec(smooth=True, normalize="minmax"))
    x = raw.double().numpy()
    smooth = local_cubic_fit((x - x.min()) / (x.max() - x.min()), 7, 3)
    want = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    np.testing.assert_allclose(out.values.numpy(), want, rtol=1e-5, atol=1e-6)
    assert out.higher_is_better is True


def test_pipeline_applies_postprocess(tmp_path):
    raw_ctx = make_ctx(tmp_path / "raw", scorer={"estimator": {"name": "grad_dot"}})
    raw = compute_layer_scores(raw_ctx)["arith"]
    ctx = make_ctx(tmp_path / "pp", scorer={"estimator": {"name": "grad_dot"},
                                            "postprocess": {"normalize": "minmax"}})
    got = compute_layer_scores(ctx)["arith"]
    torch.testing.assert_close(got.values, minmax(raw.values).float())
    assert got.details["raw_values"] == raw.values.tolist()


def test_bottom_moves_only_the_listed_layer_to_the_lowest_raw_score():
    """Layer 0 (score 5) takes the lowest raw score (1, layer 1's); min-max by hand afterwards."""
    scores = LayerScores(torch.tensor([5.0, 1.0, 3.0, 9.0, 2.0]), False, "layerif")
    out = postprocess(scores, PostprocessSpec(bottom=[0]))
    assert out.values.tolist() == [1.0, 1.0, 3.0, 9.0, 2.0]
    assert out.details["raw_values"] == [5.0, 1.0, 3.0, 9.0, 2.0]
    out = postprocess(scores, PostprocessSpec(bottom=[0], normalize="minmax"))
    torch.testing.assert_close(out.values, torch.tensor([0.0, 0.0, 0.25, 1.0, 0.125]))


def test_bottom_of_the_top_layer_stretches_the_others_in_the_same_order():
    """Layer 0 was the maximum (9): the span is then 5 − 1, and the others' order stays."""
    scores = LayerScores(torch.tensor([9.0, 1.0, 3.0, 5.0, 2.0]), False, "layerif")
    out = postprocess(scores, PostprocessSpec(bottom=[0], normalize="minmax"))
    torch.testing.assert_close(out.values, torch.tensor([0.0, 0.0, 0.5, 1.0, 0.25]))


def test_bottom_comes_before_smoothing():
    """The authors' smoothing of the scores with layers 0 and 2 moved to the lowest raw score (-7)."""
    raw = torch.tensor([8.0, 1.0, 4.0, -2.0, 6.0, 3.0, -7.0, 2.0, 6.0, 0.5, -1.0])
    moved = raw.numpy().astype(np.float64).copy()
    moved[[0, 2]] = -7.0
    x = (moved - moved.min()) / (moved.max() - moved.min())
    out = postprocess(LayerScores(raw, False, "layerif"), PostprocessSpec(bottom=[0, 2], smooth=True))
    np.testing.assert_allclose(out.values.double().numpy(), local_cubic_fit(x, 7, 3), rtol=1e-6, atol=1e-6)


def test_bottom_names_a_layer_the_scores_lack_or_a_negative_one():
    with pytest.raises(ConfigError, match=r"names layer 5, but the scores have 5 layers \(0 to 4\)"):
        postprocess(LayerScores(torch.ones(5), False, "x"), PostprocessSpec(bottom=[5]))
    with pytest.raises(ValidationError, match="distinct layer indices >= 0"):
        PostprocessSpec(bottom=[-1])
    with pytest.raises(ValidationError, match="distinct layer indices >= 0"):
        PostprocessSpec(bottom=[0, 0])
