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
    published = ["uniform", "depth ramp", "ATP (beta 0.01)", "AlphaPruning", "OWL", "DLP", "LSA", "ALP",
                 "LayerIF +VE", "LayerIF +VE (EK-FAC)", "LayerIF +VE (arithmetic task)",
                 "LayerIF +VE, layer 0 at the bottom"]
    tuned = ["ATP (tuned)", "depth ramp (tuned)", "AlphaPruning (tuned)", "OWL (tuned)", "DLP (tuned)",
             "LSA (tuned)", "ALP (tuned)", "LayerIF +VE (tuned)", "LayerIF +VE (EK-FAC, tuned)"]
    assert [a.label for a in study.arms] == published + tuned + ["select"]
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


MOE_ARMS = ["uniform", "MoLA 2-4-6-8", "MoLA 8-6-4-2", "AlphaLoRA", "LayerIF +VE", "LayerIF TOP-25%",
            "LayerIF ALL", "LayerIF +VE (EK-FAC)", "LayerIF +VE, the authors' padding",
            "harmful side +VE (reverse)", "experts rising with depth", "experts falling with depth"]


def test_the_lora_moe_study_has_the_issues_arms_on_one_base():
    """Every arm places 150 experts; the LayerIF arms are the authors' computation (DataInf on the
    attention weights, all-token mean loss, beta 3, no smoothing) and differ from +VE only where
    their label says; the two structural controls are the depth scorer rising and falling."""
    study, cells = cells_of("lora_moe.yaml")
    assert [a.label for a in study.arms] == MOE_ARMS and study.control.label == "uniform"
    assert len(study.seeds) >= 5
    by_arm = {c.arm: c.config for c in cells}
    given = {a: cfg.allocation.options["values"] for a, cfg in by_arm.items()
             if cfg.allocation.name == "given_experts"}
    assert given["MoLA 2-4-6-8"] == [2] * 8 + [4] * 7 + [6] * 7 + [8] * 8
    assert given["MoLA 8-6-4-2"] == given["MoLA 2-4-6-8"][::-1]
    assert {sum(v) for v in given.values()} == {150}
    assert {cfg.allocation.options["total"] for a, cfg in by_arm.items() if a not in given} == {150}
    authors = by_arm["LayerIF +VE"]
    assert (authors.layers.modules, authors.scorer.estimator.name, authors.scorer.aggregator.name) == (
        "attention", "datainf", "helpful_sum")
    assert (authors.scorer.loss.tokens, authors.scorer.loss.reduction) == ("all", "mean")
    assert not authors.scorer.postprocess.smooth
    assert (authors.allocation.name, authors.allocation.options["beta"]) == ("alphalora_experts", 3.0)
    plain = authors.model_dump(exclude={"name"})
    changes = {"LayerIF TOP-25%": ("aggregator", "top_helpful"), "LayerIF ALL": ("aggregator", "net_sum"),
               "harmful side +VE (reverse)": ("aggregator", "harmful_sum"),
               "LayerIF +VE (EK-FAC)": ("estimator", "ekfac")}
    for arm, (part, name) in changes.items():
        dumped = by_arm[arm].model_dump(exclude={"name"})
        assert dumped["scorer"][part]["name"] == name
        dumped["scorer"][part] = plain["scorer"][part]
        assert dumped == plain, arm
    padded = by_arm["LayerIF +VE, the authors' padding"].model_dump(exclude={"name"})
    assert padded["scorer"]["loss"]["padding"] == "authors"
    padded["scorer"]["loss"].pop("padding")
    assert padded == plain
    rising, falling = by_arm["experts rising with depth"], by_arm["experts falling with depth"]
    assert (rising.scorer.name, rising.scorer.options) == ("depth", {})
    assert (falling.scorer.name, falling.scorer.options) == ("depth", {"direction": "falling"})
    assert {rising.allocation.name, falling.allocation.name} == {"alphalora_experts"}
    training = {a: (by_arm[a].application.options["max_steps"], by_arm[a].application.options["eval_every"],
                    by_arm[a].application.options.get("early_stopping")) for a in MOE_ARMS}
    assert training == dict.fromkeys(MOE_ARMS, (120, 40, None))  # every arm trained alike, a curve each


def test_the_lora_ranks_study_has_the_layerif_arm_a_depth_ramp_and_enough_seeds():
    study, cells = cells_of("lora_ranks.yaml")
    labels = [a.label for a in study.arms]
    assert study.control.label == "uniform" and len(study.seeds) >= 5
    assert {"LayerIF +VE (authors' computation)", "depth ramp"} <= set(labels)
    by_arm = {c.arm: c.config for c in cells}
    assert by_arm["depth ramp"].scorer.name == "depth" and by_arm["uniform"].scorer.name == "uniform"
    assert {cfg.allocation.name for cfg in by_arm.values()} == {"lora_ranks"}
    evaluation = by_arm["depth ramp"].evaluation[0]
    assert (evaluation.name, evaluation.options["tasks"]) == ("lm_eval", ["layerif_arithmetic"])


def test_every_rule_is_tuned_alike_and_select_takes_the_best_of_the_tuned_rules():
    """Each tuned arm chooses its rule's parameter once (choice_seed) on the same held-out text, after
    the calibration lines, among candidates whose scores are the published arm's (one score file
    for both); select's candidates are every tuned arm's (their held-out values shared) and uniform."""
    from layerif_core.allocators.options import SelectOptions
    from layerif_core.allocators.select import candidate_configs
    from layerif_core.scoring_keys import scores_key

    for name, select_size in (("pruning.yaml", 51), ("pruning_sparsegpt.yaml", 26)):
        study, cells = cells_of(name)
        point = cells[0].point
        at = {c.arm: c.config for c in cells if c.point == point and c.seed == 0}
        options = {arm: SelectOptions(**cfg.allocation.options) for arm, cfg in at.items()
                   if cfg.allocation.name == "select"}
        assert {o.heldout.model_dump_json() for o in options.values()} == {
            options["select"].heldout.model_dump_json()}
        assert {o.choice_seed for o in options.values()} == {0}
        calibration = at["select"].application.options["calibration"]
        assert options["select"].heldout.options["skip"] >= calibration["limit"]
        labels = [c.label for c in options["select"].candidates]
        assert len(labels) == select_size
        for arm, opts in options.items():
            if arm != "select":
                assert {c.label for c in opts.candidates} <= set(labels), (name, arm)
        published = {arm.removesuffix(" (tuned)") for arm in options if arm.endswith(" (tuned)")} & set(at)
        assert published, name
        for arm in published:  # a tuned candidate scores as the published arm does
            opts = options[f"{arm} (tuned)"]
            assert scores_key(candidate_configs(opts, at["select"])[0]) == scores_key(at[arm]), (name, arm)
        betas = [c.allocation.options["beta"] for c in options["ATP (tuned)"].candidates]
        assert betas == [round(0.002 * k, 3) for k in range(1, 11)]  # the authors' grid to 70%'s bound
