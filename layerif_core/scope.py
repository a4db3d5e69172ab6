"""Scoring scope is not application scope.

The modules that layer scores are measured through (``layers``: e.g. the LoRA tensors of a scoring
adapter with ``layers.lora_only``, the LayerIF paper's route) and the weights an application acts on
are separate things. Pruning acts on the base model's linear weights and LoRA-MoE builds its experts
on the base model; the scoring adapter is not part of the result unless the user asks to merge it
into the base weights first.
"""

from __future__ import annotations

import logging

from torch import nn

from layerif_core.config import LayerSpec

log = logging.getLogger("layerif")


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries peft LoRA modules (a scoring adapter)."""
    return any(".lora_A" in name or name.startswith("lora_A") for name, _ in model.named_modules())


def base_model(model: nn.Module, merge: bool = False) -> nn.Module:
    """``model`` without its peft adapter: removed (default) or merged into the base weights.

    A model without an adapter is returned as it is. peft's ``unload``/``merge_and_unload`` replace
    the LoRA layers by their base layers in place and return the base model.
    """
    if not has_adapter(model):
        return model
    if not hasattr(model, "unload"):
        from layerif_core.errors import ModelError

        raise ModelError(f"{type(model).__name__} carries LoRA modules but is not a peft model; load "
                         "the adapter with model.adapter so that it can be removed before the "
                         "application.")
    log.info("the application acts on the base model: the scoring adapter is %s",
             "merged into the base weights" if merge else "removed")
    return model.merge_and_unload() if merge else model.unload()


def application_layers(spec: LayerSpec) -> LayerSpec:
    """The layer selection an application acts on: every base linear module of every block.

    Scoring may look through a few modules (the LayerIF authors score the self-attention q, k, v, o
    weights; ``layers.lora_only`` scores LoRA tensors) while the allocation is applied to the whole
    block, as every pruning paper prunes all of a block's linear layers and LoRA-MoE picks its own
    target modules. A selection of the scored modules therefore does not carry over.
    """
    return spec if spec == LayerSpec() else LayerSpec()
