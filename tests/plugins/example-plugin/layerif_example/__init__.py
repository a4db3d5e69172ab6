"""A complete third-party estimator for layerif (the plugin tutorial in docs/plugins.md).

``unit_query_dot``: ``I[l, i] = ⟨q^l / ‖q^l‖, g_i^l⟩`` — the gradient inner product with the query
gradient of each layer scaled to unit norm (optionally raised to a power), so that layers with large
gradients do not dominate by scale alone. It reuses layerif's Kronecker passes, so it never forms a
per-example gradient.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field

from layerif_core import hookimpl
from layerif_core.estimators.kronecker import query_gradient, score_pass


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: float = Field(1.0, description="Divide q^l by ‖q^l‖ to this power (0 = grad_dot).")


class UnitQueryDot:
    def __init__(self, options: Options):
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


@hookimpl
def layerif_register_estimators(register):
    register("unit_query_dot", UnitQueryDot, options=Options,
             help="Gradient inner product with a unit-norm query gradient per layer.")
