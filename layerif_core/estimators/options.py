"""Options of the built-in estimators (pydantic, importable without torch so that `layerif config
check` and `layerif plugins` answer at once).

``CurvatureOptions`` holds what every curvature estimator shares: which Fisher, and the damping
``λ`` per module in ``I[l, i] = (q^l)ᵀ (G_l + λ_l I)^{-1} g_i^l`` (architecture §4). The default
damping is ``λ_m = 0.1 · mean eigenvalue`` of module m's curvature block (Grosse et al. 2023 and
kronfluence use 0.1 × the mean EK-FAC eigenvalue); a number replaces it for every module, and
``module_damping`` sets it per module by a regular expression on the module's full name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class CurvatureOptions(BaseModel):
    """The Fisher and damping options of ``kfac``, ``ekfac``, ``lissa`` and ``exact``."""

    model_config = ConfigDict(extra="forbid")

    fisher: Literal["true", "empirical"] = Field(
        "true", description="'true': labels sampled from the model (seeded per example); "
                            "'empirical': the data labels.")
    damping: PositiveFloat | None = Field(
        None, description="Absolute damping λ for every module; unset: relative_damping × the "
                          "module's mean curvature eigenvalue.")
    relative_damping: PositiveFloat = Field(
        0.1, description="λ_m = relative_damping · mean eigenvalue of module m's curvature (default).")
    module_damping: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Absolute λ per module: regex on the module's full name "
                                          "→ λ; the first match wins over `damping`.")
    memory_budget_gb: PositiveFloat | None = Field(
        None, description="Device memory the factors of one module partition may take (kfac, "
                          "ekfac); unset: half the free GPU memory, a quarter of the available RAM "
                          "on a CPU. Passes run once per partition.")
    factor_offload: Literal["cpu", "disk"] = Field(
        "cpu", description="Where fitted factors wait between uses (kfac, ekfac): 'cpu' RAM, or "
                           "'disk' only (the run directory's safetensors, read memory-mapped).")

    def sample_seed(self, seed: int) -> int | None:
        """The label-sampling seed of the true Fisher, or None for the empirical Fisher."""
        return seed if self.fisher == "true" else None

    def fit_key(self) -> dict:
        """The options that change fitted curvature (the damping does not)."""
        return {"fisher": self.fisher}


def fisher_uses_seed(options: CurvatureOptions) -> bool:
    """Whether a curvature estimator's influence changes with the seed (its registry declaration):
    the true Fisher samples its labels with it, the empirical Fisher uses the data labels."""
    return options.sample_seed(0) is not None


class KFACOptions(CurvatureOptions):
    """Options of ``kfac`` (Fisher and damping)."""


class EKFACOptions(KFACOptions):
    """Options of ``ekfac`` (Fisher and damping)."""


class LissaOptions(CurvatureOptions):
    """Options of ``lissa``."""

    depth: int = Field(500, ge=1, description="Iterations of the recursion per repeat.")
    scale: PositiveFloat | None = Field(
        None, description="s; must exceed the largest eigenvalue of G + λ (unset: estimated by power "
                          "iteration, times 2).")
    repeats: int = Field(1, ge=1, description="Independent recursions averaged.")
    batch_size: int | None = Field(
        None, ge=1, description="Examples per curvature-vector product (unset: the run's batch_size).")
    power_iterations: int = Field(20, ge=1, description="Power iterations estimating λ_max per layer.")
    report_last: int = Field(10, ge=1, description="Iterations whose residual goes to the manifest.")
    tolerance: PositiveFloat = Field(
        1e-2, description="Warn when the last relative change ‖v_j − v_{j−1}‖/‖v_j‖ is above this.")


class ExactOptions(CurvatureOptions):
    """Options of ``exact``."""

    max_block_params: int = Field(
        12_000, ge=1, description="Refuse layers with more tracked parameters than this (the block "
                                  "needs P² × 8 bytes).")


class DataInfOptions(BaseModel):
    """Options of ``datainf`` (the LayerIF paper's estimator, on LoRA tensors or full weights)."""

    model_config = ConfigDict(extra="forbid")
    lambda_scale: float = Field(
        10.0, gt=0, description="λ_w = mean_i(‖g_i‖²/d_w) / lambda_scale per weight tensor (DataInf: 10)."
    )
    damping: float | None = Field(
        None, gt=0, description="A fixed λ for every tensor instead of the data-dependent one."
    )
    mode: Literal["auto", "stored", "streaming"] = Field(
        "auto", description="'stored': keep every per-example gradient (two passes; for LoRA "
        "tensors); 'streaming': keep none, Kronecker form in one validation and three training "
        "passes, memory O(weights) (for full weights); 'auto': stored when the per-example gradients "
        "of all tracked modules fit memory_gb, else streaming."
    )
    memory_gb: float = Field(
        4.0, ge=0, description="mode auto: per-example gradients up to this size (all tracked "
        "modules, float32) are stored; beyond, datainf streams."
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, description="Device memory one module partition may take (stored: its "
        "per-example gradients; streaming: q and u, twice its weights); above it the passes run "
        "once per partition (unset: half the free GPU memory, a quarter of the available RAM on a "
        "CPU)."
    )
