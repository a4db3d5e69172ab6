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


class DLPOptions(CalibrationOptions):
    """Options of the ``dlp`` scorer (calibration data: the task's train split by default)."""

    statistic: Literal["median", "mean"] = Field(
        "median", description="The block's statistic of |W|·‖X‖: the median (DLP's paper and "
        "`--strategy` default), or the mean (what `get_dlp_ratios` in the released code computes).")


class LSAOptions(CalibrationOptions):
    """Options of the ``lsa`` scorer (calibration data: the task's train split by default)."""

    fraction: float = Field(0.5, gt=0.0, le=1.0, description="Share of each group's input channels "
                            "pruned per output row (LSA's `--resp`, 0.5).")
    block_size: int = Field(128, ge=0, description="Input channels per group, pruned greedily in "
                            "turn (LSA's `--block`, 128 in its commands); 0: the whole row.")


class ALPOptions(CalibrationOptions):
    """Options of the ``alp`` scorer (calibration data: the task's train split by default)."""

    limit: int | None = Field(10, ge=1, description="Use only the first `limit` calibration examples "
                              "(ALP's `--ngrad`, 10); null: all.")
    accumulate: Literal["source", "sum"] = Field(
        "source", description="Per weight: 'source' = Σ_n g_n² + 100²·g_N² as ALP's saved "
        "`gradientsnorm_l2_hundred_total` holds it (the last example dominates); 'sum' = Σ_n g_n².")
    tokens: Literal["last", "all"] = Field(
        "last", description="Loss of each example: its last token only, as ALP's C4 loader labels "
        "it, or every token (mean).")


class RandomOptions(BaseModel):
    """Options of the ``random`` scorer."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="Seed of the scores; default: the run's seed.")


class DepthOptions(BaseModel):
    """Options of the ``depth`` scorer."""

    model_config = ConfigDict(extra="forbid")

    direction: Literal["rising", "falling"] = Field(
        "rising", description="'rising': layer l scores l (deeper layers are treated as worse "
        "trained: more sparsity, more experts, higher ranks deeper); 'falling': it scores L - 1 - l, "
        "the mirror image (more towards the first layers).")


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
