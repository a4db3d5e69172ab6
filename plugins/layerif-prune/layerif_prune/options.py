"""Typed options of the ``prune`` application (validated by the registry)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NM = re.compile(r"^(\d+):(\d+)$")


class CalibrationSpec(BaseModel):
    """Calibration text: ``samples`` random windows of ``seqlen`` tokens (Wanda's and SparseGPT's
    protocol: 128 × 2048 tokens of C4 in the papers)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None, description="A .txt file (read whole), or a data source layerif reads (.jsonl/.csv/"
        ".parquet, hub dataset, 'bundled:<task>', the WikiText-2 text 'bundled:wikitext2') whose "
        "records are joined with '\\n\\n'. Default: the training split of the task whose "
        "allocation is applied (apply_to; the only task when there is one).")
    split: str = Field("train", description="Split of a dataset source (ignored for .txt).")
    config_name: str | None = Field(None, description="Hub dataset configuration name.")
    data_files: str | list[str] | None = Field(
        None, description="File(s) of a hub dataset to read, e.g. 'en/c4-train.00000-of-01024.json.gz' "
        "of 'allenai/c4' (the first C4 shard the pruning papers calibrate on).")
    text: str = Field("{text}", description="Template of one record's text, fields in braces "
                      "(bundled tasks default to their question and answer).")
    skip: int = Field(0, ge=0, description="Leave out the first `skip` records (lines of a bundled "
                      "corpus) before `limit` (ignored for a .txt file).")
    limit: int | None = Field(None, ge=1, description="Use only the first `limit` records.")
    samples: int = Field(128, ge=1, description="Number of calibration windows.")
    seqlen: int = Field(2048, ge=2, description="Tokens per window (at most the model's context).")


class PruneOptions(BaseModel):
    """Options of the ``prune`` application."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"pruner": "wanda", "calibration": {"samples": 4, "seqlen": 32}}]})

    pruner: Literal["wanda", "sparsegpt", "magnitude"] = Field(
        "wanda", description="wanda: |W_ij|·‖X_j‖₂ per output row; sparsegpt: OBS weight updates "
        "with the Hessian 2XXᵀ/n; magnitude: |W| per matrix.")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M' (at most N non-zero "
                         "weights in every M consecutive inputs, e.g. 2:4, 4:8; sparsity 1 − N/M "
                         "in every layer, the allocation is then ignored).")
    rounding: Literal["exact", "floor"] = Field(
        "exact", description="Wanda's count per output row. exact: round(s·d_out·d_in) weights per "
        "matrix, ⌊s·d_in⌋ in every row and one more in the rows whose next score is lowest, so that "
        "every allocation prunes the same number of weights; floor: ⌊s·d_in⌋ in every row, as "
        "Wanda's reference code (short of the target by up to 1/d_in per matrix).")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec,
                                         description="Calibration data (wanda, sparsegpt).")
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass.")
    blocksize: int = Field(128, ge=1, description="SparseGPT column block size.")
    percdamp: float = Field(0.01, ge=0.0, description="SparseGPT dampening: this fraction of the "
                            "mean Hessian diagonal is added to the diagonal.")
    save_model: bool = Field(True, description="Save the pruned model (transformers format, "
                             "safetensors) to <run>/pruned_model.")
    save_masks: bool = Field(True, description="Save the masks (True = pruned) to <run>/masks.safetensors.")
    merge_adapter: bool = Field(False, description="With a scoring adapter (model.adapter, "
                                "layers.lora_only), merge it into the base weights before pruning; "
                                "by default it is removed and the base model is pruned.")
    resume: bool = Field(True, description="Keep the state after each pruned block in "
                         "<run>/prune_state (removed at the end), so that a rerun after an "
                         "interruption continues after the last finished block (wanda, sparsegpt).")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if value == "unstructured":
            return value
        match = _NM.match(value)
        if match is None:
            raise ValueError(f"'{value}' is not 'unstructured' or 'N:M' (e.g. 2:4)")
        n, m = int(match[1]), int(match[2])
        if n >= m or n < 1:
            raise ValueError(f"N:M pattern '{value}' needs 1 <= N < M (N non-zeros kept per M weights)")
        return value

    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of an N:M pattern, ``None`` when unstructured."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


def uses_seed(options: PruneOptions) -> bool:
    """Whether the pruned model can change with the run's seed: Wanda and SparseGPT draw their
    calibration windows at seeded offsets; magnitude pruning reads no data."""
    return options.pruner != "magnitude"
