"""A complete third-party estimator for layerif (the plugin tutorial in docs/plugins.md).

``unit_query_dot``: ``I[l, i] = ⟨q^l / ‖q^l‖^p, g_i^l⟩`` — the gradient inner product with the query
gradient of each layer scaled to unit norm (p = 1), so that layers with large gradients do not
dominate by scale alone. This module is the entry point: it registers the estimator by a lazy
``"module:attr"`` reference and holds the options, so `layerif --help` never imports torch for it.
"""

from pydantic import BaseModel, ConfigDict, Field

from layerif_core import hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: float = Field(1.0, description="Divide q^l by ‖q^l‖ to this power (0 = grad_dot).")


@hookimpl
def layerif_register_estimators(register):
    register("unit_query_dot", "layerif_example.estimator:UnitQueryDot", options=Options,
             seeded=False,  # samples nothing: a study shares its scores across seeds
             help="Gradient inner product with a unit-norm query gradient per layer.")
