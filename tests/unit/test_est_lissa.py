"""LiSSA converges to ``exact``, reports its convergence in the manifest, and refuses to write
scores when a too-small scale makes the recursion diverge."""

from __future__ import annotations

import pytest
import torch
from test_est_exact import small_ctx

from layerif_core.errors import NumericalError
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry


@pytest.mark.slow
def test_lissa_converges_to_exact(tmp_path):
    ctx = small_ctx(tmp_path, n_train=8)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    reg = get_registry()
    opts = {"damping": 1.0, "depth": 30, "power_iterations": 6, "batch_size": len(train),
            "report_last": 5}
    got = reg.build("estimator", "lissa", opts).influence(ctx, train, query)
    want = reg.build("estimator", "exact", {"damping": 1.0}).influence(ctx, train, query)
    assert float((got - want).norm() / want.norm()) < 1e-2
    report = ctx.run_dir.manifest["lissa"]
    assert report["converged"] and len(report["last_relative_change"]) == len(ctx.layer_map)
    assert all(len(r) == 5 and r[-1] < 1e-2 for r in report["last_relative_change"])


def test_lissa_default_damping_equals_exacts(tmp_path):
    """LiSSA's default damping, 0.1 · trace(G_m)/P_m from a pass of per-example gradient norms, equals
    exact's, 0.1 · the mean diagonal of module m's explicit block."""
    ctx = small_ctx(tmp_path, n_train=6)
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    reg = get_registry()
    lissa = reg.build("estimator", "lissa", {"depth": 1})
    lissa.fit(ctx, train)
    exact = reg.build("estimator", "exact")
    exact.fit(ctx, train)
    for l, layer in enumerate(ctx.layer_map.layers):
        want = exact.damping_vector(ctx, l, exact._blocks[f"layer{l}"])
        got = torch.cat([torch.full((tm.d_out * (tm.d_in + int(tm.has_bias)),), lissa.dampings[tm.name],
                                    dtype=torch.float64) for tm in layer])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_lissa_diverging_scale_is_an_error(tmp_path):
    ctx = small_ctx(tmp_path, n_train=4)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", "lissa", {"damping": 1.0, "scale": 1e-3, "depth": 200})
    with pytest.raises(NumericalError, match=r"LiSSA diverged in layer \d after \d+ iterations.*"
                                             r"raise options.scale"):
        est.influence(ctx, train, query)
