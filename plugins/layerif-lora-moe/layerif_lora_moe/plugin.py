"""Registration of the ``lora_moe`` application and the ``layerif moe`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl
from layerif_lora_moe.application import LoraMoeApplication
from layerif_lora_moe.config import LoraMoeOptions


@hookimpl
def layerif_register_applications(registry) -> None:
    registry.add("application", "lora_moe", LoraMoeApplication, config=LoraMoeOptions,
                 help="Mixture of LoRA experts per layer (counts from an expert allocation), trained.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_lora_moe.command import register

    register(app)
