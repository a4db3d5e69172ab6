"""The paper's study presets (examples/studies/paper/) validate and plan offline: every cell's config
is checked as a run would check it, and the plan prices every stage on an H100 from the shapes table
and the known sizes of the paper's data, with no hub and no model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from layerif_core.study.cells import build_cells
from layerif_core.study.config import load_study
from layerif_core.study.plan import plan_study

PRESETS = sorted((Path(__file__).resolve().parents[2] / "examples" / "studies" / "paper").glob("*.yaml"))
TASKS = ["mrpc", "cola", "commonsense_qa", "openbookqa", "scienceqa"]
DATA_FREE = {"uniform", "depth"}  # scorers that read no data: their score stage costs nothing


def test_there_is_a_preset_per_model_and_task_and_a_pruning_preset_per_model():
    names = {p.stem for p in PRESETS}
    expected = {f"moe_{m}_{t}" for m in ("mistral7b", "gemma7b") for t in TASKS}
    expected |= {"prune_mistral7b", "prune_gemma7b"}
    assert names == expected


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_cell_validates_offline(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study, base = load_study(path)
    cells = build_cells(study, base)
    arms = {a.label for a in study.arms}
    assert len(cells) == len(arms) * len(study.points()) * len(study.seeds)
    assert len(study.seeds) >= 3
    for cell in cells:
        assert cell.config.model.dtype == "bfloat16"


@pytest.mark.parametrize("path", [p for p in PRESETS if p.stem.startswith("moe_")], ids=lambda p: p.stem)
def test_moe_arms_place_160_experts_over_every_layer(path):
    layers = 32 if "mistral" in path.stem else 28
    study, base = load_study(path)
    for cell in build_cells(study, base):
        alloc = cell.config.allocation
        if alloc.name == "given_experts":
            values = alloc.options["values"]
            assert len(values) == layers and sum(values) == 160, cell.arm
        else:
            assert alloc.options["total"] == 160, cell.arm


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_the_plan_prices_every_stage_on_an_h100(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_study(path, "H100")
    assert not any("states no cost" in n or "size unknown" in n for n in plan.notes()), plan.notes()
    for stage in plan.stages:
        assert math.isfinite(stage.seconds) and stage.seconds >= 0, stage.label
        if not (stage.kind == "scores" and stage.label in DATA_FREE):
            assert stage.seconds > 0, stage.label
        assert stage.cost.peak_bytes <= plan.device.memory_bytes, stage.label
    assert math.isfinite(plan.seconds) and plan.seconds > 0
