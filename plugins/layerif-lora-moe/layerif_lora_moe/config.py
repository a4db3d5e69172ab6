"""Options of the ``lora_moe`` application (plain data; validated by the registry)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from layerif_core.config import DataSpec

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraMoeOptions(BaseModel):
    """LoRA experts, router, and the training run of the ``lora_moe`` application."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"max_steps": 2}]})

    rank: int = Field(8, ge=1, description="LoRA rank r of every expert.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; an expert's update is scaled by alpha/rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the experts' input (peft lora_dropout).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Linear modules of each decoder block that get experts: a name matches a module "
        "whose path inside the block equals it or ends with '.<name>'.")
    top_k: int = Field(2, ge=1, description="Experts mixed per token; capped at a layer's expert count.")
    aux_loss_weight: float = Field(0.01, ge=0, description="Weight of the Switch load-balancing loss "
                                   "(summed over the routed modules) added to the task loss.")
    train: DataSpec | None = Field(
        None, description="Training data (default: the train split of the task whose allocation is "
        "applied, apply_to).")
    validation: DataSpec | None = Field(
        None, description="Validation data for the loss curve (default: the validation split "
        "of the task whose allocation is applied, apply_to).")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (peak, after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps; cosine decay to 10% after it.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored with max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per micro-batch (default: the run's).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (None: off).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs the forward under autocast.")
    eval_every: int = Field(0, ge=0, description="Validation loss every N steps (0: at start and end only).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps for resume (0: at the end only).")
    seed: int | None = Field(None, description="Seed of expert init, data order and dropout "
                             "(default: the run's).")
