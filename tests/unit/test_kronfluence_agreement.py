"""Our ``ekfac`` equals the reference implementation, kronfluence (EK-FAC, its damping heuristic
``damping_factor=None`` = 0.1 × mean EK-FAC eigenvalue per module, per-module pairwise scores), on a
tiny random Llama: the same per-example, per-layer influences ``I[l, i]`` (same sign: positive =
helpful) for the empirical and the true Fisher, through the benchmark's kronfluence harness (our
loss as its ``Task``, our sampled labels). Runs where kronfluence is installed (``nox -s tests`` and
``nox -s bench`` install it)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry

kronfluence = pytest.importorskip("kronfluence")

from benchmarks.bench_estimators import kronfluence_influence  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_ekfac_equals_kronfluence_on_a_tiny_llama(tmp_path, fisher):
    model = tiny_model("llama")
    ctx = make_ctx(tmp_path, model=model)  # 6 train (batches of 4 and 2), 3 query examples
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    reference = copy.deepcopy(model)  # kronfluence wraps its linear modules in place

    ours = get_registry().build("estimator", "ekfac", {"fisher": fisher}).influence(ctx, train, query)
    theirs, _, _ = kronfluence_influence(ctx, reference, train, query, len(query),
                                         tmp_path / "kronfluence", fisher)

    assert ours.shape == theirs.shape == (len(ctx.layer_map), len(train))
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * float(theirs.abs().max()))
