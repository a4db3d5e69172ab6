"""The estimator itself: it reuses layerif's Kronecker passes, so it never forms a per-example
gradient."""

import torch

from layerif_core.estimators.kronecker import query_gradient, score_pass


class UnitQueryDot:
    def __init__(self, options):
        self.power = options.power

    def fit(self, ctx, train):
        """No curvature to fit."""

    def influence(self, ctx, train, query) -> torch.Tensor:
        q = query_gradient(ctx, query)  # module name -> [d_out, d_in (+1)]
        for layer in ctx.layer_map.layers:
            norm = torch.sqrt(sum(q[m.name].square().sum() for m in layer))
            for m in layer:
                q[m.name] = q[m.name] / norm.clamp_min(1e-30) ** self.power
        return score_pass(ctx, train, q)  # [L, N]
