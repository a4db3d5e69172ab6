"""LoRA-MoE for layerif: ``n_l`` LoRA experts and a top-k router on each target module of decoder
layer ``l``, the counts ``n_l`` coming from an expert allocator over layer scores (architecture §5–6).

Python API::

    from layerif_lora_moe import inject_lora_moe, load_lora_moe, LoraMoeOptions
"""

from layerif_lora_moe.config import LoraMoeOptions
from layerif_lora_moe.model import LoraMoeModel, inject_lora_moe, load_lora_moe

__all__ = ["LoraMoeOptions", "LoraMoeModel", "inject_lora_moe", "load_lora_moe"]
