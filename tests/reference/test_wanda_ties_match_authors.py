"""Wanda's mask on exactly tied scores, as the reference code selects it.

The reference (locuslab/wanda ``lib/prune.py``, ``prune_wanda``, unstructured branch) restated plainly:
``W_metric = |W| · sqrt(scaler_row)``, ``sort_res = torch.sort(W_metric, dim=-1, stable=True)``, and the
first ``int(d_in · sparsity)`` indices of each row are pruned: among equal scores the lower column index
goes first. layerif's ``wanda_mask`` with ``rounding="floor"`` must give the same mask (the default,
``exact``, prunes one more weight in some rows where ``s · d_in`` is not whole: the same number of
weights per matrix for every allocation; ``tests/plugins/test_prune_pruners.py``).
"""

from __future__ import annotations

import pytest
import torch

from layerif_prune.masks import magnitude_mask, wanda_mask


def authors_wanda_mask(weight: torch.Tensor, scaler_row: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The unstructured branch of ``prune_wanda``, line by line."""
    w_metric = torch.abs(weight) * torch.sqrt(scaler_row.reshape((1, -1)))
    w_mask = torch.zeros_like(w_metric) == 1
    sort_res = torch.sort(w_metric, dim=-1, stable=True)
    indices = sort_res[1][:, :int(w_metric.shape[1] * sparsity)]
    w_mask.scatter_(1, indices, True)
    return w_mask


def tied_layer() -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of magnitude 1, 2 or 3 and input norms² of 1 or 4: many equal scores in every row,
    tied across the pruning threshold at every sparsity below (rows of 64, 3 signs × 3 magnitudes)."""
    g = torch.Generator().manual_seed(0)
    magnitude = torch.randint(1, 4, (16, 64), generator=g).float()
    sign = torch.where(torch.rand(16, 64, generator=g) < 0.5, -1.0, 1.0)
    sq_norms = torch.where(torch.arange(64) % 3 == 0, 4.0, 1.0)  # scores |w|·2 tie with |w| = 2 elsewhere
    return magnitude * sign, sq_norms


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_tied_scores_are_pruned_lower_column_first(sparsity):
    weight, sq_norms = tied_layer()
    want = authors_wanda_mask(weight, sq_norms, sparsity)
    got = wanda_mask(weight, sq_norms, sparsity, rounding="floor")
    scores = weight.abs() * sq_norms.sqrt()
    kth = scores.sort(dim=1).values[:, int(64 * sparsity) - 1: int(64 * sparsity) + 1]
    assert (kth[:, 0] == kth[:, 1]).any()  # the setup ties across the threshold (else it tests nothing)
    assert torch.equal(got, want)
    if 64 * sparsity == int(64 * sparsity):  # whole counts per row: exact rounding is the same rule
        assert torch.equal(wanda_mask(weight, sq_norms, sparsity), want)


def test_tied_magnitudes_are_pruned_lower_flat_index_first():
    """Magnitude pruning keeps the same rule over the flattened matrix (a stable sort of |W|)."""
    weight, _ = tied_layer()
    k = int(weight.numel() * 0.5)
    want = torch.zeros(weight.numel(), dtype=torch.bool)
    want[torch.sort(weight.abs().flatten(), stable=True).indices[:k]] = True
    assert torch.equal(magnitude_mask(weight, 0.5), want.reshape(weight.shape))
