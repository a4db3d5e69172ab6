"""Typed options of the ``lora_ranks`` allocator and application (validated by the registry).

Torch-free on purpose: ``layerif plugins`` and config checks import this module without torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from layerif_core.early_stopping import EarlyStopping


class RankOptions(BaseModel):
    """Options of the ``lora_ranks`` allocator: the budget, the bounds and the shaping."""

    model_config = ConfigDict(extra="forbid")

    rank: int | dict[str, int] | None = Field(
        None, description="Rank r of the uniform adapter whose LoRA parameter count is the budget "
        "(r·(d_in+d_out) per target module); a mapping {module type: r} gives each type its own r "
        "(then per_module_type must be true). Default: finetune.rank.")
    min_rank: int = Field(1, ge=1, description="Smallest rank of any layer (>= 1).")
    max_rank: int | None = Field(None, ge=1, description="Largest rank of any layer (default: none).")
    multiple_of: int = Field(1, ge=1, description="Every rank is a multiple of this (e.g. 2 or 4); "
                             "min_rank is rounded up and max_rank down to it.")
    beta: float = Field(3.0, gt=0, description="Exponent of the worse-ness as in alphalora_experts: "
                        "extra rank ∝ w_l ** (beta / temperature).")
    temperature: float = Field(1.0, gt=0, description="Divides beta: higher flattens the ranks "
                               "towards uniform, lower sharpens them.")
    normalize: bool = Field(True, description="Min-max the worse-ness to [0, 1] first (LayerIF). "
                            "Off: the raw worse-ness is used and must be >= 0.")
    per_module_type: bool = Field(
        False, validate_default=True, description="Allocate each module type (each name of "
        "target_modules) separately with its own budget, so every type keeps the parameter count "
        "of its uniform adapter.")

    @field_validator("rank")
    @classmethod
    def _rank(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if isinstance(value, dict) and not value:
            raise ValueError("the mapping of module type to rank is empty; give at least one type")
        if any(v < 1 for v in values):
            raise ValueError("every uniform rank must be >= 1")
        return value

    @field_validator("max_rank")
    @classmethod
    def _max(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_rank")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max_rank {value} is below min_rank {low}; raise it")
        return value

    @field_validator("per_module_type")
    @classmethod
    def _per_type(cls, value: bool, info: ValidationInfo) -> bool:
        if isinstance(info.data.get("rank"), dict) and not value:
            raise ValueError("a rank per module type needs per_module_type: true")
        return value


class LoraRanksOptions(BaseModel):
    """Options of the ``lora_ranks`` application (the adapter itself comes from ``finetune:``)."""

    model_config = ConfigDict(extra="forbid")

    alpha: Literal["scale", "fixed"] = Field(
        "scale", description="scale: each module's alpha is finetune.alpha · r_l / r, so alpha/rank "
        "(the LoRA scaling) equals the uniform adapter's; fixed: finetune.alpha everywhere (the "
        "scaling then falls as the rank grows).")
    train: bool | None = Field(
        None, description="Fine-tune the adapter with the allocated ranks (finetune: options) and run "
        "the evaluators on it. Default: when the config has a finetune: section.")
    compare_uniform: bool = Field(
        False, description="Also fine-tune and evaluate the uniform-rank adapter of the same "
        "parameter count (metrics prefixed 'uniform/'), for a comparison in one run.")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop the fine-tune when the loss on a held-out part of its training data "
        "stops falling and keep the best adapter ({patience, eval_every, min_delta, holdout}); "
        "finetune.epochs is then the limit. Default: off, every epoch is trained.")
