"""Registration of the ``lora_moe`` application and the ``layerif moe`` command."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl


@hookimpl
def layerif_register_applications(register) -> None:
    register("lora_moe", "layerif_lora_moe.application:LoraMoeApplication",
             options="layerif_lora_moe.config:LoraMoeOptions",
             help="Mixture of LoRA experts per layer (counts from an expert allocation), trained.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_lora_moe.command import register

    register(app)
