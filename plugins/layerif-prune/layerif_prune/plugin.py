"""Registration of the ``prune`` application and the ``layerif prune`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl


@hookimpl
def layerif_register_applications(register) -> None:
    register("prune", "layerif_prune.application:Prune", options="layerif_prune.options:PruneOptions",
             seeded="layerif_prune.options:uses_seed",
             help="Prune with magnitude, Wanda or SparseGPT to a layer-wise sparsity allocation.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_prune.command import register

    register(app)
