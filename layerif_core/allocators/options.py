"""Options of the built-in allocators (pydantic, importable without torch)."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerif_core.config import ComponentSpec, LayerSpec, ScorerSpec


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


class SelectCandidate(BaseModel):
    """One arm ``select`` tries: a scorer, an allocator, and optionally the modules it scores."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(..., min_length=1, description="Name of the candidate in select.json and in the "
                       "chosen allocation's `allocator` (select:<label>).")
    scorer: ScorerSpec = Field(default_factory=ScorerSpec, description="Its layer scorer, as the run "
                               "config's `scorer:` section (name, options, estimator, aggregator, "
                               "postprocess).")
    allocation: ComponentSpec = Field(..., description="Its allocator and options; select's `sparsity` "
                                      "is set in the options of an allocator that has one.")
    layers: LayerSpec | None = Field(None, description="Modules it scores (default: the run's "
                                     "`layers`), e.g. {modules: all} for AlphaPruning.")
    grid: dict[str, list[Any]] | None = Field(
        None, description="Allocator options that each take several values: the candidate stands for "
        "one candidate per combination, labelled '<label> (<option> <value>, ...)', e.g. {epsilon: "
        "[0.1, 0.2, 0.3]} to tune a rule's parameter on the held-out data.")
    grid_point: dict[str, Any] | None = Field(
        None, description="Set by the expansion of a `grid`: this candidate's option values. A grid "
        "point whose allocation cannot meet the budget at this sparsity is skipped (recorded as "
        "infeasible); any other candidate that fails stops select.")


class HeldoutSpec(BaseModel):
    """The evaluator ``select`` compares the candidates with."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Registered evaluator; it must read its text through a "
                      "`source` option (perplexity), so that select can check it is held out.")
    options: dict[str, Any] = Field(default_factory=dict, description="The evaluator's options.")


class SelectOptions(BaseModel):
    """Options of ``select``: the candidates, the held-out evaluator and the metric compared."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{
            "sparsity": 0.5,
            "candidates": [
                {"label": "uniform", "scorer": {"name": "uniform"},
                 "allocation": {"name": "uniform_sparsity"}},
                {"label": "depth ramp", "scorer": {"name": "depth"},
                 "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.2}}}],
            "heldout": {"name": "perplexity", "options": {
                "source": "bundled:wikitext2", "split": "validation", "limit": 40, "seqlen": 32,
                "max_windows": 2, "name": "heldout"}},
            "metric": "perplexity/heldout"}]})

    sparsity: float | None = Field(None, ge=0.0, lt=1.0, description="Target mean sparsity, set in "
                                   "every candidate allocator that has a `sparsity` option, so all "
                                   "candidates spend the same budget (unset: each its own).")
    candidates: list[SelectCandidate] = Field(..., min_length=1, description="The arms to try.")
    heldout: HeldoutSpec = Field(..., description="Evaluator of each candidate's result on held-out "
                                 "data: disjoint from the calibration text and from every "
                                 "`evaluation:` evaluator's data (see docs/select.md).")
    metric: str | None = Field(None, description="Metric key of the held-out evaluator to compare, e.g. "
                               "perplexity/heldout (perplexity names it perplexity/<name>); default: "
                               "the first metric it returns.")
    better: Literal["lower", "higher"] = Field("lower", description="Which held-out value wins "
                                               "(lower for perplexity, higher for an accuracy).")
    choice_seed: int | None = Field(
        None, description="Choose once for every seed: the candidates are measured with this seed's "
        "data (calibration windows, seeded scores), their held-out values cached, so that every run "
        "of a study makes the same choice at the cost of one; the chosen candidate is then applied "
        "with the run's own seed, as its own arm would be. Default: each run chooses with its seed.")

    @field_validator("candidates", mode="before")
    @classmethod
    def _expand_grids(cls, candidates: Any) -> Any:
        """A candidate with a ``grid`` becomes one candidate per combination of its values."""
        if not isinstance(candidates, list):
            return candidates
        out: list[Any] = []
        for c in candidates:
            grid = c.get("grid") if isinstance(c, dict) else None
            if not grid:
                out.append({k: v for k, v in c.items() if k != "grid"} if isinstance(c, dict) else c)
                continue
            if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
                raise ValueError(f"candidate '{c.get('label')}': grid must map allocator options to "
                                 "non-empty lists of values, e.g. {epsilon: [0.1, 0.2]}")
            for values in itertools.product(*grid.values()):
                setting = dict(zip(grid, values, strict=True))
                allocation = dict(c.get("allocation") or {})
                allocation["options"] = {**(allocation.get("options") or {}), **setting}
                label = f"{c.get('label')} ({', '.join(f'{k} {v}' for k, v in setting.items())})"
                out.append({**{k: v for k, v in c.items() if k != "grid"}, "label": label,
                            "allocation": allocation, "grid_point": setting})
        return out

    @field_validator("candidates")
    @classmethod
    def _unique_labels(cls, candidates: list[SelectCandidate]) -> list[SelectCandidate]:
        labels = [c.label for c in candidates]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"candidate labels must be unique; repeated: {dup}; rename them")
        return candidates

    def check_config(self, config: Any) -> None:
        """Checks against the whole run (``check_components`` calls it before any model loads):
        every candidate's components and options, and that the held-out data are held out."""
        from layerif_core.allocators.select_check import check_select

        check_select(self, config)
