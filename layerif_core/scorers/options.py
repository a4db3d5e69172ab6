"""Options of the built-in scorers (pydantic, importable without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from layerif_core.config import DataSpec


class CalibrationOptions(BaseModel):
    """Where a data-driven baseline takes its examples from."""

    model_config = ConfigDict(extra="forbid")

    data: DataSpec | None = Field(
        None, description="Calibration data; default: a split of the task being scored."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first `limit` calibration examples.")


class BlockInfluenceOptions(CalibrationOptions):
    """Options of the ``block_influence`` scorer (calibration data: the task's train split by default)."""

    angular: bool = Field(False, description="Per-token angular distance arccos(cos)/π instead of "
                          "1 − cos.")


class GradientNormOptions(CalibrationOptions):
    """Options of ``gradient_norm`` (data: the task's validation split by default)."""

    normalize: bool = Field(False, description="Divide each layer's norm by sqrt(its parameter count).")


class OWLOptions(CalibrationOptions):
    """Options of the ``owl_outlier`` scorer (calibration data: the task's train split by default)."""

    threshold: float = Field(5.0, gt=0, description="M: a weight is an outlier when its score exceeds "
                             "M times the block's mean score (OWL's Hyper_m).")


class RandomOptions(BaseModel):
    """Options of the ``random`` scorer."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="Seed of the scores; default: the run's seed.")


def random_uses_seed(options: RandomOptions) -> bool:
    """Whether the ``random`` scores change with the run's seed (its registry declaration): they
    do unless the options fix their own seed."""
    return options.seed is None


class HTSROptions(BaseModel):
    """Options of the ``htsr_alpha`` scorer."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["alpha", "alpha_hat"] = Field(
        "alpha", description="Per-matrix metric: the power-law exponent α, or α·log10(λ_max)."
    )
    xmin: Literal["peak", "ks", "mid"] = Field(
        "peak", description="How λ_min is chosen: KS search near the ESD's peak (AlphaPruning's "
        "alpha_peak), KS search over all eigenvalues, or the eigenvalue at N/xmin_pos (alpha_mid)."
    )
    aggregate: Literal["mean", "median"] = Field(
        "mean", description="How a layer's matrices are combined (AlphaPruning: mean)."
    )
    bins: int = Field(100, ge=2, description="Histogram bins of log10 λ for xmin='peak'.")
    xmin_pos: float = Field(2.0, gt=1.0, description="xmin='mid': λ_min is the eigenvalue at N/xmin_pos.")
    peak_lower_bound: Literal["source", "intended"] = Field(
        "source", description="xmin='peak': the lower end of the search window, log10(0.95·peak) as "
        "in AlphaPruning's code, or 0.95·peak."
    )
    filter_zeros: bool = Field(
        False, description="Drop eigenvalues below evals_thresh before fitting (AlphaPruning: off)."
    )
    evals_thresh: float = Field(1e-5, gt=0, description="Threshold of filter_zeros.")
    weights_precision: Literal["float32", "float16"] = Field(
        "float32", description="The weights' values the spectra are taken of: a float32 copy of the "
        "weights as loaded, or that copy rounded to float16 first (AlphaPruning's published runs load "
        "the model in float16)."
    )
