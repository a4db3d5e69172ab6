"""layerif-prune: application (b) of LayerIF, a sparsity budget spread over layers by their scores
and applied by a standard pruner (magnitude, Wanda, SparseGPT), block by block."""

from __future__ import annotations

from layerif_core.lazy import lazy_exports

_EXPORTS = {
    "CalibrationSpec": "layerif_prune.options",
    "Prune": "layerif_prune.application",
    "PruneOptions": "layerif_prune.options",
    "prune_model": "layerif_prune.application",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
