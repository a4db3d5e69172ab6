"""``layerif study STUDY.yaml --plan``: what a study will cost before anything runs.

Every cell's config is checked (as a run would), the cells are grouped into the stages they share
(the dense evaluation once, a scoring adapter per fine-tuning config, layer scores per scoring
config: the keys the runner uses), and each stage's cost is estimated from the model's shapes (read
offline: :mod:`layerif_core.shapes`) and the components' options (:mod:`layerif_core.estimates`;
applications and evaluators state theirs through an ``estimate`` method), then turned into seconds
and peak memory on a device of the table (:mod:`layerif_core.cost`). Nothing is downloaded, loaded
or written. Stages whose results are already in the study directory (finished cells, cached
scores, held-out measurements, the dense evaluation) are counted as done and cost nothing: the plan
of a study that was interrupted prices what is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerif_core.config import RunConfig
from layerif_core.cost import Cost, Device, gib, load_device, weights_bytes
from layerif_core.estimates import Workload, component_cost, dtype_of, finetune_cost, scorer_cost
from layerif_core.scope import application_layers
from layerif_core.scoring_keys import scoring_config, scoring_run_key
from layerif_core.study.cells import Cell, build_cells, select_cells
from layerif_core.study.config import load_study

DISK_BYTES_PER_S = 2e9  # loading a model's weights into memory


@dataclass
class Stage:
    """One unit of work: a shared stage (run once for the cells that use it) or a cell's own part."""

    kind: str  # "dense evaluation", "adapter", "scores", "held-out", "cell"
    label: str
    cells: list[str]
    cost: Cost
    seconds: float
    runs: int = 1
    done: int = 0  # of the runs, those whose results are already in the study directory

    @property
    def total_seconds(self) -> float:
        """What is left of this row: its runs not done."""
        return self.seconds * (self.runs - self.done)


@dataclass
class StudyPlan:
    """The stages of a study with their predicted cost on one device."""

    name: str
    device: Device
    cells: list[Cell]
    stages: list[Stage] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # source -> "dtype, params, bytes"

    @property
    def seconds(self) -> float:
        return sum(s.total_seconds for s in self.stages)

    @property
    def peak_bytes(self) -> float:
        return max((s.cost.peak_bytes for s in self.stages), default=0.0)

    def notes(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.stages:
            for note in filter(None, s.cost.note.split("; ")):
                seen.setdefault(note, None)
        return list(seen)

    def markdown(self) -> str:
        """The plan as a Markdown report (what ``--plan`` prints)."""
        dev = self.device
        lines = [f"# Plan of study '{self.name}': {len(self.cells)} cells on {dev.name}",
                 "", f"Device: {dev.name}, {gib(dev.memory_bytes)}; throughput: {dev.source}."]
        lines += [f"Model: {src} ({what})." for src, what in self.models.items()]
        lines += ["", "| stage | runs | done | cells | time each | peak memory | time left |",
                  "|---|---|---|---|---|---|---|"]
        for s in self.stages:
            fits = "" if s.cost.peak_bytes <= dev.memory_bytes else " **does not fit**"
            lines.append(f"| {s.kind}: {s.label} | {s.runs} | {s.done} | {len(s.cells)} | "
                         f"{duration(s.seconds)} | {gib(s.cost.peak_bytes)}{fits} | "
                         f"{duration(s.total_seconds)} |")
        shared = sum(s.total_seconds for s in self.stages if s.kind != "cell")
        lines += ["", f"**Total: {self.seconds / 3600:.2f} device-hours** on {dev.name} (shared stages "
                  f"{duration(shared)}, cells {duration(self.seconds - shared)}); largest stage peak "
                  f"{gib(self.peak_bytes)} of {gib(dev.memory_bytes)}."]
        cells = [s for s in self.stages if s.kind == "cell"]
        finished = sum(s.done for s in cells)
        if any(s.done for s in self.stages):
            lines.append(f"Already in the study directory (not counted): {finished} of "
                         f"{sum(s.runs for s in cells)} cells, "
                         f"{sum(s.done for s in self.stages if s.kind != 'cell')} shared stages.")
        if self.peak_bytes > dev.memory_bytes:
            lines.append("Stages marked **does not fit** need a larger device, FSDP over several "
                         "(model.fsdp under torchrun) or smaller batches.")
        notes = self.notes()
        if notes:
            lines += ["", "Assumptions:"] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"study": self.name, "device": self.device.name, "device_source": self.device.source,
                "cells": len(self.cells), "seconds": self.seconds, "peak_bytes": self.peak_bytes,
                "stages": [{"kind": s.kind, "label": s.label, "runs": s.runs, "done": s.done,
                            "cells": s.cells,
                            "seconds": s.seconds, "peak_bytes": s.cost.peak_bytes,
                            "flops": s.cost.total_flops, "note": s.cost.note} for s in self.stages]}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Shapes:
    """Meta-device models by (source, dtype), built once each."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, torch.dtype], torch.nn.Module] = {}

    def get(self, cfg: RunConfig, dtype: torch.dtype) -> torch.nn.Module:
        from layerif_core.shapes import meta_model, model_config

        key = (cfg.model.source, dtype)
        if key not in self._models:
            self._models[key] = meta_model(model_config(cfg.model.source, cfg.model.trust_remote_code),
                                           dtype)
        return self._models[key]


def plan_study(path: str | Path, device: str, data: dict[str, Any] | None = None,
               arms: list[str] | None = None, seeds: list[int] | None = None,
               points: list[str] | None = None) -> StudyPlan:
    """The plan of the study file ``path`` on ``device`` (a name of the device table, or ``cpu``)."""
    from layerif_core.study.runner import Shared

    study, base = load_study(path, data)
    directory = Path(study.output_dir) / study.name
    cells = select_cells(build_cells(study, base, output_dir=str(directory / "runs")), arms, seeds, points)
    dev = load_device(device)
    plan = StudyPlan(study.name, dev, cells)
    shapes, shared = Shapes(), Shared(directory)
    gpu = device.lower() != "cpu"
    found: dict[tuple[str, str], Stage] = {}

    on_disk = OnDisk(directory, shared)

    def stage(kind: str, key: str, label: str, cell: Cell, estimate: Any, dtype: torch.dtype,
              done: bool = False) -> None:
        if (kind, key) not in found:
            cost = estimate()
            found[(kind, key)] = Stage(kind, label, [], cost, cost.seconds(dev, dtype), done=int(done))
            plan.stages.append(found[(kind, key)])
        found[(kind, key)].cells.append(cell.id)

    for cell in cells:
        cfg = cell.config
        dtype = dtype_of(cfg, gpu)
        model = shapes.get(cfg, dtype)
        plan.models.setdefault(cfg.model.source, f"{str(dtype).removeprefix('torch.')}, "
                               f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
                               f"{gib(weights_bytes(model, dtype))}")
        work = Workload(cfg, model, dtype)
        if study.dense and cfg.evaluation:
            stage("dense evaluation", "dense", "the unmodified model", cell,
                  lambda w=work: evaluation_cost(w), dtype, on_disk.dense(cfg))
        if cfg.layers.lora_only and not cfg.model.adapter:
            stage("adapter", repr(cfg.finetune.model_dump()), "LoRA fine-tuning for scoring", cell,
                  lambda w=work: finetune_cost(w), dtype, on_disk.adapter(cfg))
        for scored in [cfg, *allocator_scoring(cfg)]:
            stage("scores", scores_key(shared, scored), scorer_label(scored), cell,
                  lambda w=Workload(scored, model, dtype): scorer_cost(w), dtype, on_disk.scores(scored))
        for key, label, cand, estimate in allocator_stages(cfg):
            cand_work = Workload(cand.model_copy(update={"layers": application_layers(cand.layers)}),
                                 model, dtype)
            stage("held-out", key, label, cell, lambda w=cand_work, e=estimate: e(w), dtype,
                  on_disk.heldout(key))
        app = Workload(cfg.model_copy(update={"layers": application_layers(cfg.layers)}), model, dtype)
        stage("cell", cell.id, cell.arm, cell, lambda w=app: cell_cost(w), dtype, on_disk.cell(cell))
    merge_rows(plan)
    return plan


class OnDisk:
    """Which stages a study directory already holds, read where the runner writes them (a stage
    counts as done when its result file is there; the runner still checks its inputs before reuse)."""

    def __init__(self, directory: Path, shared: Any) -> None:
        self.directory, self.shared = directory, shared
        self._heldout: set[str] | None = None

    def dense(self, cfg: RunConfig) -> bool:
        return self.shared.dense_path(cfg).is_file()

    def adapter(self, cfg: RunConfig) -> bool:
        from layerif_core.finetune import STATE_FILE

        # the runner fine-tunes with the scoring seed (one adapter for every seed when the
        # scores do not depend on it)
        out = self.shared.adapter_path(cfg.model_copy(update={"seed": scoring_config(cfg)["seed"]}))
        return (out / STATE_FILE).is_file() and (out / "adapter_model.safetensors").is_file()

    def scores(self, cfg: RunConfig) -> bool:
        if self.shared.scores_path(cfg).is_file():
            return True
        if cfg.scorer.name != "layerif":
            return False
        from layerif_core.scorers.layerif import INFLUENCE_FILE

        return (self.shared.scoring_runs / scoring_run_key(scoring_config(cfg)) / INFLUENCE_FILE).is_file()

    def heldout(self, key: str) -> bool:
        """``select``'s candidate measurements carry the key the plan prices them by (``identity``)."""
        if self._heldout is None:
            from layerif_core.allocators.select import CACHE
            from layerif_core.study.runner import read_json

            found = (read_json(p) for p in sorted((self.shared.root / CACHE).glob("*.json")))
            self._heldout = {f["identity"] for f in found if isinstance(f, dict) and "identity" in f}
        return key in self._heldout

    def cell(self, cell: Cell) -> bool:
        from layerif_core.study.runner import cell_result

        found = cell_result(self.directory, cell.id)
        return found is not None and found.ok


def scores_key(shared: Any, cfg: RunConfig) -> str:
    """What one scoring run computes: for ``layerif`` the influences, which every arm differing only
    in its aggregator or post-processing reuses (:func:`~layerif_core.scoring_keys.scoring_run_key`;
    aggregating them again costs arithmetic on L × N numbers); for any other scorer its scores."""
    if cfg.scorer.name == "layerif":
        return f"influences {scoring_run_key(scoring_config(cfg))}"
    return str(shared.scores_path(cfg))


def allocator_scoring(cfg: RunConfig) -> list[RunConfig]:
    """The configs whose scores the allocator reads besides the run's (``select``'s candidates)."""
    from layerif_core.registry import get_registry

    if cfg.allocation is None:
        return []
    allocator = get_registry().build("allocator", cfg.allocation.name, cfg.allocation.options)
    found = getattr(allocator, "scoring_configs", None)
    return found(cfg) if callable(found) else []


def allocator_stages(cfg: RunConfig) -> list[tuple[str, str, RunConfig, Any]]:
    """The allocator's own shared stages (``select``'s candidate measurements, once per cache key)."""
    from layerif_core.registry import get_registry

    if cfg.allocation is None:
        return []
    allocator = get_registry().build("allocator", cfg.allocation.name, cfg.allocation.options)
    found = getattr(allocator, "heldout_stages", None)
    return found(cfg) if callable(found) else []


def scorer_label(cfg: RunConfig) -> str:
    spec = cfg.scorer
    if spec.name != "layerif":
        return spec.name
    return f"layerif {spec.estimator.name} on {cfg.tasks[0].name}"


def evaluation_cost(work: Workload) -> Cost:
    total = Cost(peak_bytes=work.weights())
    for spec in work.config.evaluation:
        total = total + component_cost(work, "evaluator", spec.name, spec.options)
    return total


def cell_cost(work: Workload) -> Cost:
    """A cell's own stages: loading the model's weights, an allocator that states a cost (``select``
    tries candidates), the application, the evaluation."""
    from layerif_core.registry import get_registry

    cfg = work.config
    total = Cost(peak_bytes=work.weights(), fixed_seconds=work.weights() / DISK_BYTES_PER_S)
    if cfg.allocation is not None:
        own = getattr(get_registry().build("allocator", cfg.allocation.name, cfg.allocation.options),
                      "estimate", None)
        if callable(own):
            total = total + own(work)
    if cfg.application is not None:
        total = total + component_cost(work, "application", cfg.application.name, cfg.application.options)
    return total + evaluation_cost(work)


def merge_rows(plan: StudyPlan) -> None:
    """Stages of one kind and label with the same predicted cost become one row (``runs`` = their
    number): a cell row per arm, a score row per seed-dependent scorer."""
    arm_of = {c.id: c.arm for c in plan.cells}
    rows: dict[tuple[str, str, float], Stage] = {}
    for s in plan.stages:
        if s.kind == "cell":
            s.label = f"{arm_of[s.cells[0]]}: load, application, evaluation"
        key = (s.kind, s.label, round(s.seconds, 6))
        if key in rows:
            rows[key].runs += s.runs
            rows[key].done += s.done
            rows[key].cells += s.cells
        else:
            rows[key] = s
    plan.stages = list(rows.values())
