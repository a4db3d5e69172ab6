"""Registration of the ``lora_ranks`` allocator and application and the ``layerif lora-ranks`` command.

Factories and options are lazy ``"module:attr"`` strings: listing components imports no torch."""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl


@hookimpl
def layerif_register_allocators(register) -> None:
    register("lora_ranks", "layerif_lora_ranks.allocator:LoraRankAllocator",
             options="layerif_lora_ranks.options:RankOptions",
             help="LoRA rank per layer ∝ worse-ness^beta, min/max/multiple, the exact parameter "
             "budget of a uniform-rank adapter.")


@hookimpl
def layerif_register_applications(register) -> None:
    register("lora_ranks", "layerif_lora_ranks.application:LoraRanks",
             options="layerif_lora_ranks.options:LoraRanksOptions",
             help="A peft LoraConfig with rank_pattern/alpha_pattern from a rank allocation; "
             "fine-tuned and evaluated when finetune: is configured.")


@hookimpl
def layerif_register_commands(app) -> None:
    from layerif_lora_ranks.command import register

    register(app)
