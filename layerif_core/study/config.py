"""The typed study file (architecture §9): a base run config, arms, a grid, seeds, metrics.

A study is read without importing torch, so that its validation (every cell's run config) is fast and
fails before any model loads.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from layerif_core.errors import ConfigError, closest


class StudyError(ConfigError):
    """A study file, a study directory or a study's options are wrong."""


class StudyStrict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSpec(StudyStrict):
    """One arm: a label and the config overrides that make it (dotted paths, as ``--set``)."""

    label: str = Field(..., min_length=1, description="Name of the arm in tables and plots.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted config paths and their values, e.g. "
        "{scorer.name: htsr_alpha, allocation.name: alpha_pruning}.")
    control: bool = Field(False, description="The arm every other arm is compared with (exactly one).")


class MetricSpec(StudyStrict):
    """A metric the report shows, and which direction is better."""

    name: str = Field(..., description="Metric name as the evaluators report it, e.g. "
                      "'perplexity/wikitext2'.")
    better: Literal["lower", "higher", "none"] | None = Field(
        None, description="Which direction wins ('none': a measurement such as the achieved "
        "sparsity, no best and no wins); default: lower for names with 'perplexity', 'ppl' or "
        "'loss', higher otherwise.")
    target_effect: float | None = Field(
        None, gt=0, description="The smallest paired difference to the control worth detecting, in "
        "the metric's units (e.g. 0.0023 for the paper's +0.23 accuracy points); the report then "
        "gives, per comparison, how many seeds detect it with 80% power at the spread the study "
        "observed (the 'seeds for target' column). Must be > 0.")

    @model_validator(mode="after")
    def _target_needs_a_direction(self) -> MetricSpec:
        if self.target_effect is not None and self.better == "none":
            raise ValueError(f"metric '{self.name}' is a measurement (better: none) and has no "
                             "target effect; remove target_effect or set better: lower or higher")
        return self

    def goal(self) -> Literal["lower", "higher", "none"]:
        if self.better is not None:
            return self.better
        name = self.name.lower()
        return "lower" if any(k in name for k in ("perplexity", "ppl", "loss")) else "higher"


class StudyConfig(StudyStrict):
    """A comparative study: cells = arms × grid points × seeds, each a run config."""

    name: str = Field("study", description="Study name; results go to <output_dir>/<name>/.")
    output_dir: str = Field("studies", description="Parent directory of study directories.")
    base: dict[str, Any] | str = Field(
        ..., description="The base run config: a mapping, or a path to a run config file (relative "
        "to the study file).")
    arms: list[ArmSpec] = Field(..., min_length=1, description="The arms; one is the control.")
    grid: dict[str, list[Any]] | list[dict[str, Any]] = Field(
        default_factory=dict, description="Dotted config paths and the values each takes; the cells "
        "cross every axis, e.g. {allocation.options.sparsity: [0.5, 0.7]}. Or a list of grid points, "
        "each a mapping of the same paths to values, for grids that are not a cross product (e.g. "
        "2:4 pruning with Wanda only).")
    seeds: list[int] = Field([0], min_length=1, description="Seeds (run config `seed`) of each cell.")
    metrics: list[MetricSpec] = Field(
        default_factory=list, description="Metrics of the report (name or {name, better, "
        "target_effect}); default: every metric the cells report.")
    test: Literal["t", "wilcoxon"] = Field(
        "t", description="Paired test of an arm against the control over seeds: paired t "
        "(scipy.stats.ttest_rel) or Wilcoxon signed-rank (scipy.stats.wilcoxon).")
    references: list[str] = Field(
        default_factory=list, description="Further arms (labels) every arm is compared with, seed by "
        "seed as with the control, e.g. the strongest baseline: the summary adds a paired-difference "
        "table for each. A choice of the report; changing it reruns no cell.")
    dense: bool = Field(True, description="Evaluate the unmodified model once as a reference row.")
    keep_runs: bool = Field(False, description="Keep each cell's run directory (pruned model, "
                            "masks, ...); by default only its result JSON stays.")

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        labels = [a.label for a in arms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"two arms are labelled '{dup[0]}'; give every arm its own label")
        controls = [a.label for a in arms if a.control]
        if not controls:
            raise ValueError("no arm is the control; mark one with `control: true`")
        if len(controls) > 1:
            raise ValueError(f"arms {controls} are all marked control; mark exactly one")
        return arms

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]] | list[dict[str, Any]]) -> Any:
        if isinstance(grid, list):
            if not grid:
                raise ValueError("grid is an empty list of points; give at least one point or remove it")
            keys = list(grid[0])
            for point in grid:
                if list(point) != keys:
                    raise ValueError(f"grid point {point} names other paths than the first point "
                                     f"({', '.join(keys)}); give every point the same paths")
            if len({json.dumps(p, sort_keys=True) for p in grid}) != len(grid):
                raise ValueError("the grid repeats a point; list each point once")
            return grid
        for path, values in grid.items():
            if not values:
                raise ValueError(f"grid axis '{path}' is empty; give it at least one value or remove it")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"grid axis '{path}' repeats a value; list each value once")
        return grid

    @model_validator(mode="after")
    def _seeds(self) -> StudyConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds repeat a value; list each seed once")
        labels = [a.label for a in self.arms]
        for ref in self.references:
            if ref not in labels:
                raise ValueError(f"references: no arm is labelled '{ref}'{closest(ref, labels)}; "
                                 "name arms by their labels")
            if ref == self.control.label:
                raise ValueError(f"references: '{ref}' is the control, compared with already; "
                                 "remove it from references")
        if len(set(self.references)) != len(self.references):
            raise ValueError("references repeat an arm; list each once")
        return self

    @property
    def axes(self) -> list[str]:
        """The grid's config paths, in order."""
        return list(self.grid[0]) if isinstance(self.grid, list) else list(self.grid)

    def points(self) -> list[dict[str, Any]]:
        """The grid points (path -> value); one empty point when there is no grid."""
        if isinstance(self.grid, list):
            return [dict(p) for p in self.grid]
        axes = self.axes
        return [dict(zip(axes, values, strict=True))
                for values in itertools.product(*(self.grid[a] for a in axes))]

    @property
    def control(self) -> ArmSpec:
        return next(a for a in self.arms if a.control)

    def fingerprint(self) -> str:
        """Identity of the study: what decides which cells exist and what they run."""
        data = self.model_dump(mode="json", exclude={"output_dir", "metrics", "test", "keep_runs",
                                                        "references"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_study(path: str | Path, data: dict[str, Any] | None = None) -> tuple[StudyConfig, dict[str, Any]]:
    """Parse a study file into the :class:`StudyConfig` and its base run config mapping."""
    from layerif_core.config import describe_validation_error, read_mapping

    path = Path(path)
    raw = copy.deepcopy(data) if data is not None else read_mapping(path)
    arms = raw.get("arms")
    if isinstance(arms, list):
        for i, arm in enumerate(arms):
            if isinstance(arm, dict) and not arm.get("label"):
                raise StudyError(f"{path}: arm {i + 1} has no label; give it `label: <name>`.")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "value_error":
            raise StudyError(f"{path}: {str(err['msg']).removeprefix('Value error, ')}.") from None
        raise StudyError(f"{path}: {describe_validation_error(exc, StudyConfig)}") from None
    if isinstance(study.base, str):
        base_path = Path(study.base)
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise StudyError(f"{path}: base run config '{study.base}' does not exist (looked for "
                             f"{base_path}); give a path relative to the study file.")
        base = read_mapping(base_path)
    else:
        base = copy.deepcopy(study.base)
    return study, base
