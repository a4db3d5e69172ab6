"""LoRA-MoE for layerif: ``n_l`` LoRA experts and a top-k router on each target module of decoder
layer ``l``, the counts ``n_l`` coming from an expert allocator over layer scores (architecture §5–6).

Python API::

    from layerif_lora_moe import inject_lora_moe, load_lora_moe, LoraMoeOptions
"""

from __future__ import annotations

from layerif_core.lazy import lazy_exports

_EXPORTS = {
    "LoraMoeOptions": "layerif_lora_moe.config",
    "LoraMoeModel": "layerif_lora_moe.model",
    "inject_lora_moe": "layerif_lora_moe.model",
    "load_lora_moe": "layerif_lora_moe.model",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
