"""Registration of the ``prune`` application and the ``layerif prune`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl
from layerif_prune.application import Prune
from layerif_prune.options import PruneOptions


@hookimpl
def layerif_register_applications(registry) -> None:
    registry.add("application", "prune", Prune, config=PruneOptions,
                 help="Prune with magnitude, Wanda or SparseGPT to a layer-wise sparsity allocation.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_prune.command import register

    register(app)
