"""A study with a ``select`` arm on the tiny study: it runs from the study file, its cells apply the
chosen candidate, it reuses the scores of the study's other arms, and ``--plan`` prices it."""

from __future__ import annotations

import json

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)

from layerif_core.study.plan import plan_study
from layerif_core.study.runner import run_study

pytestmark = pytest.mark.slow

HELDOUT = {"name": "perplexity", "options": {
    "source": "bundled:capitals", "split": "validation", "text": "{question} {answer}", "limit": 40,
    "seqlen": 32, "max_windows": 4, "name": "heldout"}}
SELECT_ARM = {"label": "select", "overrides": {
    "scorer.name": "uniform", "allocation.name": "select",
    "allocation.options": {"metric": "perplexity/heldout", "heldout": HELDOUT, "candidates": [
        {"label": "uniform", "scorer": {"name": "uniform"}, "allocation": {"name": "uniform_sparsity"}},
        {"label": "depth ramp", "scorer": {"name": "depth"},
         "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.5}}}]}}}


def study(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out", seeds=[0], grid={"allocation.options.sparsity": [0.4]})
    data["arms"] = [data["arms"][0], SELECT_ARM]
    return write_study(tmp_path / "tiny.yaml", data)


def test_a_study_with_a_select_arm_runs_and_shares_scores_with_the_other_arms(tiny_dir, tmp_path):  # noqa: F811
    outcome = run_study(study(tiny_dir, tmp_path), show_progress=False)
    assert outcome.failed == [] and len(outcome.ran) == 2
    records = {r["arm"]: r for r in (json.loads(p.read_text())
                                     for p in (outcome.directory / "cells").glob("*.json"))}
    chosen = records["select"]["allocation"]["allocator"]
    assert chosen in ("select:uniform", "select:depth ramp")
    held = [json.loads(p.read_text()) for p in (outcome.directory / "shared" / "select").glob("*.json")]
    assert sorted(h["label"] for h in held) == ["depth ramp", "uniform"]
    best = min(held, key=lambda h: h["value"])
    assert chosen == f"select:{best['label']}"
    assert records["select"]["allocation"]["values"] == best["allocation"]["values"]
    # the grid's sparsity reached every candidate
    assert all(h["allocator_options"]["sparsity"] == 0.4 for h in held)
    # the uniform candidate's scores are the uniform arm's (shared/scores, one scoring config)
    assert next(h for h in held if h["label"] == "uniform")["reused"]["scores"] is True
    # the cell records the choice and every candidate's held-out value; the summary counts choices
    choice = records["select"]["allocation"]["select"]
    assert choice["chosen"] == best["label"]
    assert choice["values"] == {h["label"]: h["value"] for h in held}
    from layerif_core.study.report import build_report

    summary = build_report(outcome.directory)["summary.md"].read_text()
    assert "## What select chose" in summary
    assert f"| select | sparsity=0.4 | {best['label']} ×1 |" in summary
    # the plan finds the candidates' measurements on disk: nothing is left
    held = [s for s in plan_study(study(tiny_dir, tmp_path), "H100").stages if s.kind == "held-out"]
    assert len(held) == 2 and all(s.done == s.runs == 1 for s in held)


def test_the_plan_prices_the_select_arm_above_the_uniform_arm(tiny_dir, tmp_path):  # noqa: F811
    plan = plan_study(study(tiny_dir, tmp_path), "cpu")
    cells = {s.label.split(":")[0]: s for s in plan.stages if s.kind == "cell"}
    # two candidates: two more prunes and two held-out evaluations than the uniform cell, as stages
    # of their own (one per cache key: shared between the arms and seeds that measure alike)
    held = [s for s in plan.stages if s.kind == "held-out"]
    assert {s.label for s in held} == {"select: uniform", "select: depth ramp"}
    total = cells["select"].cost.total_flops + sum(s.cost.total_flops * s.runs for s in held)
    assert total > 2 * cells["uniform"].cost.total_flops


def test_a_select_cell_that_applies_another_arms_allocation_takes_that_cells_outcome(tiny_dir, tmp_path):  # noqa: F811
    """``select`` choosing the candidate another arm runs (the same allocation, application,
    evaluation, data and seed) does not prune and evaluate again: it takes the finished cell's
    metrics and names it; a cell of another seed does not."""
    data = tiny_study(tiny_dir, tmp_path / "out", seeds=[0, 1], grid={"allocation.options.sparsity": [0.4]})
    only_uniform = {**SELECT_ARM["overrides"]["allocation.options"],
                    "candidates": SELECT_ARM["overrides"]["allocation.options"]["candidates"][:1]}
    data["arms"] = [data["arms"][0], {"label": "select", "overrides": {
        **SELECT_ARM["overrides"], "allocation.options": only_uniform}}]
    path = write_study(tmp_path / "tiny.yaml", data)
    outcome = run_study(path, show_progress=False, seeds=[0])
    run_study(path, show_progress=False, arms=["uniform"], seeds=[1])
    assert outcome.failed == [] and len(outcome.ran) == 2
    records = {(r["arm"], r["seed"]): r for r in (json.loads(p.read_text())
                                                 for p in (outcome.directory / "cells").glob("*.json"))}
    uniform, chosen = records[("uniform", 0)], records[("select", 0)]
    assert chosen["allocation"]["values"] == uniform["allocation"]["values"]
    assert chosen["outcome"] == {"key": uniform["outcome"]["key"], "reused_from": uniform["id"]}
    assert chosen["metrics"] == uniform["metrics"] and "application" not in chosen["timings"]
    # another seed calibrates on other windows: its own outcome
    assert records[("uniform", 1)]["outcome"]["key"] != uniform["outcome"]["key"]
    assert "reused_from" not in records[("uniform", 1)]["outcome"]


def test_a_candidate_without_layers_scores_through_the_cells_scoring_layers(tiny_dir, tmp_path):  # noqa: F811
    """As in ``layerif run``: a study cell scores through ``layers`` (here the attention modules)
    while the application acts on every module; a candidate that names no ``layers`` scores as the
    cell does, so its scores are the LayerIF arm's, not a computation over every module."""
    data = tiny_study(tiny_dir, tmp_path / "out", seeds=[0], grid={"allocation.options.sparsity": [0.4]})
    data["base"]["layers"] = {"modules": "attention"}
    layerif = {"label": "LayerIF", "scorer": data["base"]["scorer"],
               "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.3}}}
    options = {**SELECT_ARM["overrides"]["allocation.options"], "candidates": [layerif]}
    data["arms"] = [{**data["arms"][1], "control": True}, {"label": "select", "overrides": {
        **SELECT_ARM["overrides"], "allocation.options": options}}]
    outcome = run_study(write_study(tmp_path / "tiny.yaml", data), show_progress=False)
    assert outcome.failed == [] and len(outcome.ran) == 2
    (held,) = [json.loads(p.read_text()) for p in (outcome.directory / "shared" / "select").glob("*.json")]
    # two score files: the LayerIF arm's (the candidate's too) and the select cell's own (uniform)
    assert len(list((outcome.directory / "shared" / "scores").glob("*.json"))) == 2
    assert held["reused"]["scores"] is True
