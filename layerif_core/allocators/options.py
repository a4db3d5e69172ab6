"""Options of the built-in allocators (pydantic, importable without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class UniformSparsityOptions(BaseModel):
    """Options of ``uniform_sparsity``."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"sparsity": 0.5}]})

    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Target sparsity s in [0, 1) of every layer.")


class AlphaPruningOptions(BaseModel):
    """Options of ``alpha_pruning``."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"sparsity": 0.5, "epsilon": 0.2}]})

    sparsity: float = Field(..., ge=0.0, lt=1.0,
                            description="Target parameter-weighted mean sparsity s in [0, 1).")
    epsilon: float = Field(0.2, ge=0.0, description="Relative range: raw ratios span [1 − ε, 1 + ε] "
                           "before scaling (AlphaPruning scripts use 0.2–0.3, LayerIF sweeps 0.1–0.5).")
    absolute: bool = Field(False, description="Read epsilon as an absolute half-width δ: sparsities "
                           "span [s − δ, s + δ] (ε = δ / s).")
    max_sparsity: float = Field(0.99, gt=0.0, le=1.0,
                                description="Upper clip of a layer's sparsity (see overflow).")
    overflow: Literal["rebalance", "clip"] = Field(
        "rebalance", description="Layers above max_sparsity: 'rebalance' clips them and re-solves η "
        "on the others so the mean stays exactly s; 'clip' only clips them, as AlphaPruning's and "
        "the LayerIF authors' code does (the mean then falls below s).")
    weighted: bool = Field(True, description="Keep the parameter-weighted mean at s (AlphaPruning); "
                           "false: the plain mean over layers.")


class OWLSparsityOptions(BaseModel):
    """Options of ``owl_sparsity``."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"sparsity": 0.5}]})

    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Target mean sparsity s in [0, 1).")
    lamda: float = Field(0.08, ge=0.0, description="OWL's λ: sparsities span [s − λ, s + λ] "
                         "(the min-maxed scores span [0, 2λ]).")


class DLPSparsityOptions(BaseModel):
    """Options of ``dlp_sparsity`` (the map of DLP, LSA and ALP)."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"sparsity": 0.5}]})

    sparsity: float = Field(..., ge=0.0, lt=1.0,
                            description="Target parameter-weighted mean sparsity s in [0, 1).")
    alpha: float | None = Field(None, ge=0.0, description="α: sparsities span [s − α, s + α]. Default: "
                                "the authors' value for the target (0.06, 0.02, 0.04, 0.02, 0.04, 0.1, "
                                "0.15, 0.12 at s = 0.1 … 0.8; DLP's and LSA's code).")
    weighted: bool = Field(True, description="Centre on the parameter-weighted mean (exact budget for "
                           "blocks of unequal size); false: the plain mean over layers, as the authors "
                           "write it (the same when all blocks are equal).")


class ATPSparsityOptions(BaseModel):
    """Options of ``atp_sparsity``."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"sparsity": 0.5, "beta": 0.05}]})

    sparsity: float = Field(..., ge=0.0, lt=1.0,
                            description="Target parameter-weighted mean sparsity S in [0, 1).")
    beta: float = Field(..., ge=0.0, description="β: the common difference of the sparsity from one "
                        "layer to the next (the authors search 0.002, 0.004, … while legal).")


class ExpertOptions(BaseModel):
    """Options shared by the expert allocators."""

    model_config = ConfigDict(extra="forbid")

    total: int | None = Field(
        None, ge=1, description="Total number of experts E over all layers (default: 4 per layer)."
    )
    min_per_layer: int = Field(1, ge=1, description="Minimum number of experts of every layer.")


class AlphaLoRAOptions(ExpertOptions):
    """Options of the AlphaLoRA/LayerIF expert allocator."""

    beta: float = Field(3.0, gt=0, description="Exponent of the worse-ness: v_l = w_l ** (beta / "
                        "temperature); 2.5 in AlphaLoRA, 3 in LayerIF's example.")
    temperature: float = Field(1.0, gt=0, description="Divides beta: higher flattens the allocation "
                               "towards uniform, lower sharpens it.")
    normalize: bool = Field(True, description="Min-max the worse-ness to [0, 1] first (LayerIF). "
                            "Off: the raw worse-ness is used and must be >= 0 (AlphaLoRA's alpha-hat).")


class GivenOptions(BaseModel):
    """A user-given allocation (for hand-made studies)."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"values": [1, 2, 3]}]})

    values: list[int] = Field(..., min_length=1, description="Experts per layer, one integer >= 1 each.")
