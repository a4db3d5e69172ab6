"""layerif-prune: application (b) of LayerIF, a sparsity budget spread over layers by their scores
and applied by a standard pruner (magnitude, Wanda, SparseGPT), block by block."""

from layerif_prune.application import Prune, prune_model
from layerif_prune.options import CalibrationSpec, PruneOptions

__all__ = ["CalibrationSpec", "Prune", "PruneOptions", "prune_model"]
