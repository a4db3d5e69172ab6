"""Every study preset in examples/studies/ validates cell by cell (run configs, components and their
options; no model is loaded), and the pruning presets hold what the pruning study needs: every rule
of its comparison, Wanda at 50/60/70%, SparseGPT at 70%, at least 5 seeds and 16k evaluation tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerif_core.study.cells import build_cells
from layerif_core.study.config import load_study

PRESETS = Path(__file__).resolve().parents[2] / "examples" / "studies"


def cells_of(name: str):
    study, base = load_study(PRESETS / name)
    return study, build_cells(study, base)


@pytest.mark.parametrize("name", sorted(p.name for p in PRESETS.glob("*.yaml")))
def test_every_cell_of_every_preset_validates(name):
    study, cells = cells_of(name)
    assert len(cells) == len(study.arms) * len(study.points()) * len(study.seeds) > 0


def test_the_pruning_study_compares_every_rule_under_wanda():
    study, cells = cells_of("pruning.yaml")
    assert [a.label for a in study.arms] == [
        "uniform", "depth ramp", "ATP (beta 0.01)", "AlphaPruning", "OWL", "DLP", "LSA", "ALP",
        "LayerIF +VE", "LayerIF +VE (EK-FAC)", "LayerIF +VE (arithmetic task)",
        "LayerIF +VE, layer 0 at the bottom"]
    assert study.control.label == "uniform" and len(study.seeds) >= 5
    assert sorted({c.config.allocation.options["sparsity"] for c in cells}) == [0.5, 0.6, 0.7]
    by_arm = {c.arm: c.config for c in cells}
    assert {cfg.application.options["pruner"] for cfg in by_arm.values()} == {"wanda"}
    rules = {arm: (cfg.scorer.name, cfg.allocation.name) for arm, cfg in by_arm.items()}
    assert rules["ATP (beta 0.01)"] == ("uniform", "atp_sparsity")
    assert {rules[a] for a in ("DLP", "LSA", "ALP")} == {(s, "dlp_sparsity") for s in ("dlp", "lsa", "alp")}
    authors, ablation = by_arm["LayerIF +VE"], by_arm["LayerIF +VE, layer 0 at the bottom"]
    assert (authors.scorer.estimator.name, authors.scorer.aggregator.name) == ("datainf", "helpful_sum")
    assert authors.scorer.postprocess.smooth and authors.scorer.postprocess.bottom == []
    assert ablation.scorer.postprocess.bottom == [0]
    moved = ablation.model_dump(exclude={"name"})
    moved["scorer"]["postprocess"]["bottom"] = []
    assert moved == authors.model_dump(exclude={"name"})  # only block 0's place in the score differs
    perplexity = authors.evaluation[0].options
    assert perplexity["seqlen"] * perplexity["max_windows"] >= 16_000


def test_sparsegpt_at_70_percent_covers_the_leading_rules_on_the_same_base():
    study, cells = cells_of("pruning_sparsegpt.yaml")
    assert {"uniform", "depth ramp", "ATP (beta 0.01)", "AlphaPruning", "LayerIF +VE (EK-FAC)",
            "LayerIF +VE (arithmetic task)"} <= {a.label for a in study.arms}
    assert {(c.config.application.options["pruner"], c.config.allocation.options["sparsity"])
            for c in cells} == {("sparsegpt", 0.7)}
    assert len(study.seeds) >= 5
    _, base = load_study(PRESETS / "pruning_sparsegpt.yaml")
    _, wanda_base = load_study(PRESETS / "pruning.yaml")
    base["application"]["options"]["pruner"] = "wanda"
    assert base == wanda_base


def test_the_layerif_variants_keep_the_arms_the_earlier_study_published():
    study, _ = cells_of("pruning_layerif_variants.yaml")
    assert {"LayerIF TOP-25%", "LayerIF ALL", "harmful side +VE (reverse)",
            "LayerIF +VE (LoRA-adapter route)"} <= {a.label for a in study.arms}
