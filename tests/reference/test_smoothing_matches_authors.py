"""The pruning route's score pre-processing and sparsity map against the LayerIF authors' released
Mistral-7B scores (``mistral_pruning_scores.json``, from HadiAskari/LayerIF_Pruning_New): layerif's
Savitzky–Golay smoothing (``scorer.postprocess``) of their raw file must give their smoothed file, and
AlphaPruning's map with ``overflow: clip`` must give ``ww_sparsity``'s ratios (PAPER §1 "Scores →
sparsity", §3(b))."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import savgol_filter

from layerif_core.allocators.preprocess import postprocess
from layerif_core.config import PostprocessSpec
from layerif_core.registry import get_registry
from layerif_core.results import LayerScores
from reference import authors
from reference.tolerance import SMOOTHING_ATOL

FIXTURE = json.loads(Path(__file__).with_name("mistral_pruning_scores.json").read_text())
RAW = FIXTURE["mistral-7b/IF-300-96"]
SMOOTHED = FIXTURE["mistral-7b/IF-300-96-smoothed"]
MISTRAL_BLOCK_PARAMS = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336  # q, o; k, v; MLP


def layerif_smoothed(values: list[float]) -> torch.Tensor:
    scores = LayerScores(torch.tensor(values, dtype=torch.float32), False, "x")
    out = postprocess(scores, PostprocessSpec(smooth=True, window=7, order=3))
    assert out.higher_is_better is False
    return out.values.double()


def test_fixture_is_32_blocks_min_maxed():
    assert len(RAW) == len(SMOOTHED) == 32
    assert min(RAW) == RAW[0] == 0.0 and max(RAW) == 1.0


def test_reference_least_squares_is_savitzky_golay():
    np.testing.assert_allclose(authors.savgol(RAW), savgol_filter(np.array(RAW), 7, 3), atol=1e-12)


def test_reference_smoothing_reproduces_the_smoothed_file():
    smoothed = authors.savgol(authors.minmax(RAW), 7, 3)
    np.testing.assert_allclose(smoothed, SMOOTHED, rtol=0, atol=SMOOTHING_ATOL)


def test_layerif_smoothing_equals_the_authors_smoothed_file():
    got = layerif_smoothed(RAW)
    np.testing.assert_allclose(got.numpy(), SMOOTHED, rtol=0, atol=SMOOTHING_ATOL)
    np.testing.assert_allclose(got.numpy(), authors.savgol(authors.minmax(RAW)), rtol=0, atol=1e-6)


def test_layerif_smoothing_min_maxes_first():
    # the same scores on another scale (as a helpful mass, before normalisation) smooth alike
    rescaled = [3.0 + 250.0 * v for v in RAW]
    np.testing.assert_allclose(layerif_smoothed(rescaled).numpy(), SMOOTHED, rtol=0, atol=SMOOTHING_ATOL)


@pytest.mark.parametrize(("sparsity", "epsilon"), [(0.5, 0.1), (0.4, 0.3), (0.95, 0.3)])
def test_alpha_pruning_clip_equals_ww_sparsity(sparsity, epsilon):
    smoothed = layerif_smoothed(RAW)
    params = [float(MISTRAL_BLOCK_PARAMS)] * len(RAW)
    allocator = get_registry().build("allocator", "alpha_pruning",
                                     {"sparsity": sparsity, "epsilon": epsilon, "overflow": "clip"})
    got = allocator.allocate(LayerScores(smoothed.float(), False, "layerif"), params).values
    expected = authors.ww_sparsity(authors.savgol(authors.minmax(RAW)), params, sparsity, epsilon)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if sparsity == 0.95:  # the case where ww_sparsity clips at 0.99 without re-balancing
        assert max(expected) == 0.99 and np.mean(expected) < sparsity
