"""``select``: the candidate with the best held-out value, on a tiny random Llama saved on disk.

Each candidate's held-out value is computed independently by running that candidate alone as a plain
``layerif run`` (its scorer, its allocator with the target sparsity, the same pruning, the held-out
evaluator as the run's evaluation), and select must agree with those runs and pick their best."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from layerif_core.config import RunConfig
from layerif_core.errors import BudgetError, ConfigError, LayerifError, PluginError
from layerif_core.pipeline import run
from layerif_core.registry import check_components, get_registry
from layerif_core.testing import save_tiny_model

SPARSITY = 0.5
HELDOUT = {"name": "perplexity", "options": {
    "source": "bundled:capitals", "split": "validation", "text": "{question} {answer}", "limit": 40,
    "seqlen": 32, "max_windows": 4, "name": "heldout"}}
CANDIDATES = [
    {"label": "uniform", "scorer": {"name": "uniform"}, "allocation": {"name": "uniform_sparsity"}},
    {"label": "depth ramp", "scorer": {"name": "depth"},
     "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.6}}},
    {"label": "mild ramp", "scorer": {"name": "depth"},
     "allocation": {"name": "owl_sparsity", "options": {"lamda": 0.1}}},
    {"label": "AlphaPruning", "scorer": {"name": "htsr_alpha"}, "layers": {"modules": "all"},
     "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.4}}},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_tiny_model(path)
    return path


def base(model_dir: Path, out: Path, **changes: Any) -> dict[str, Any]:
    data = {
        "name": "sel", "output_dir": str(out),
        "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
        "batch_size": 4,
        "tasks": [{"name": "caps", "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                  "max_length": 96}}],
        "scorer": {"name": "uniform"},
        "allocation": {"name": "select", "options": {
            "sparsity": SPARSITY, "candidates": CANDIDATES, "heldout": HELDOUT,
            "metric": "perplexity/heldout"}},
        "application": {"name": "prune", "options": {
            "pruner": "wanda", "save_model": False, "save_masks": False,
            "calibration": {"source": "bundled:capitals", "text": "{question} {answer}", "samples": 4,
                            "seqlen": 32}}},
        "evaluation": [{"name": "perplexity", "options": {
            "source": "bundled:capitals", "split": "test", "text": "{question} {answer}", "limit": 40,
            "seqlen": 32, "max_windows": 4}}],
    }
    data.update(copy.deepcopy(changes))
    return data


def config(data: dict[str, Any]) -> RunConfig:
    return RunConfig.model_validate(data)


def with_options(data: dict[str, Any], **options: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["allocation"]["options"].update(copy.deepcopy(options))
    return data


def alone(data: dict[str, Any], candidate: dict[str, Any], name: str) -> dict[str, Any]:
    """The candidate as a plain run: its scorer, layers and allocator (with the target sparsity),
    the same application, and the held-out evaluator as the run's only evaluation."""
    data = copy.deepcopy(data)
    data.update(name=name, scorer=candidate["scorer"], evaluation=[HELDOUT],
                allocation={"name": candidate["allocation"]["name"],
                            "options": {**candidate["allocation"].get("options", {}), "sparsity": SPARSITY}})
    if "layers" in candidate:
        data["layers"] = candidate["layers"]
    return data


@pytest.fixture(scope="module")
def selected(tiny_dir, tmp_path_factory):
    """select over CANDIDATES, and each candidate run alone."""
    out = tmp_path_factory.mktemp("runs")
    data = base(tiny_dir, out)
    result = run(config(data), show_progress=False)
    singles = {}
    for i, cand in enumerate(CANDIDATES):
        res = run(config(alone(data, cand, f"alone{i}")), show_progress=False)
        singles[cand["label"]] = res
    return data, result, singles


def test_select_picks_the_candidate_with_the_best_heldout_value(selected):
    _, result, singles = selected
    heldout = {label: r.metrics["perplexity/heldout"] for label, r in singles.items()}
    assert len(set(heldout.values())) == len(heldout)  # the candidates do differ: the choice matters
    best = min(heldout, key=heldout.get)
    allocation = result.allocations["caps"]
    assert allocation.allocator == f"select:{best}"
    assert allocation.values == singles[best].allocations["caps"].values
    record = json.loads((result.run_dir / "select.json").read_text())["caps"]
    assert record["chosen"] == best
    assert {c["label"]: c["value"] for c in record["candidates"]} == pytest.approx(heldout, rel=1e-9)


def test_select_json_lists_every_candidate_with_its_allocation_and_seconds(selected):
    _, result, singles = selected
    record = json.loads((result.run_dir / "select.json").read_text())["caps"]
    assert [c["label"] for c in record["candidates"]] == [c["label"] for c in CANDIDATES]
    assert record["metric"] == "perplexity/heldout" and record["better"] == "lower"
    for cand in record["candidates"]:
        assert cand["allocation"]["values"] == singles[cand["label"]].allocations["caps"].values
        assert set(cand["seconds"]) >= {"scores", "application", "evaluation"}
        assert cand["achieved_sparsity"] == singles[cand["label"]].metrics["sparsity/achieved"]
    # the run's own metrics are the chosen allocation applied again on the run's model
    chosen = singles[record["chosen"]].metrics
    assert result.metrics["sparsity/achieved"] == chosen["sparsity/achieved"]
    assert "perplexity/heldout" not in result.metrics


def test_the_chosen_budget_is_exact(selected):
    _, result, _ = selected
    from layerif_core.layers import LayerMap
    from layerif_core.testing import tiny_model

    weights = LayerMap(tiny_model("llama")).num_params()
    values = result.allocations["caps"].values
    mean = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    assert mean == pytest.approx(SPARSITY, abs=1e-12)


def test_a_second_seed_reuses_seed_free_scores_and_seed_free_heldout_values(tiny_dir, tmp_path):
    heldout = {"name": "perplexity", "options": {"source": "bundled:wikitext2", "split": "validation",
                                                 "limit": 30, "seqlen": 32, "max_windows": 3,
                                                 "name": "heldout"}}
    candidates = [
        {"label": "depth ramp", "scorer": {"name": "depth"},
         "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.5}}},
        {"label": "random", "scorer": {"name": "random"},
         "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.5}}},
    ]
    data = with_options(base(tiny_dir, tmp_path, evaluation=[], application={
        "name": "prune", "options": {"pruner": "magnitude", "save_model": False, "save_masks": False}}),
        candidates=candidates, heldout=heldout)
    records = {}
    for seed in (0, 1):
        result = run(config({**data, "seed": seed}), show_progress=False)
        found = json.loads((result.run_dir / "select.json").read_text())["caps"]["candidates"]
        records[seed] = {c["label"]: c for c in found}
    assert records[0]["depth ramp"]["reused"] == {"scores": False, "heldout": False}
    # depth scores, magnitude pruning and WikiText-2 perplexity do not use the seed: all reused
    assert records[1]["depth ramp"]["reused"]["heldout"] is True
    assert records[1]["depth ramp"]["value"] == records[0]["depth ramp"]["value"]
    # random scores do: computed again for seed 1
    assert records[1]["random"]["reused"] == {"scores": False, "heldout": False}


def test_a_second_seed_reuses_seed_free_scores_and_prunes_again_with_its_own_calibration(tiny_dir, tmp_path):
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=[CANDIDATES[1], CANDIDATES[3]])
    reused = {}
    for seed in (0, 1):
        result = run(config({**data, "seed": seed}), show_progress=False)
        found = json.loads((result.run_dir / "select.json").read_text())["caps"]["candidates"]
        reused[seed] = [c["reused"] for c in found]
    assert reused[0] == [{"scores": False, "heldout": False}] * 2
    # depth and htsr_alpha do not use the seed; Wanda's calibration windows and the bundled task do
    assert reused[1] == [{"scores": True, "heldout": False}] * 2


def test_a_choice_seed_chooses_once_and_applies_the_choice_with_each_runs_own_seed(tiny_dir, tmp_path):
    """choice_seed 0: seed 1 reuses seed 0's held-out values and choice, then allocates with the
    chosen candidate's scores of seed 1 (random scores: they differ by seed), as that candidate's
    own run with seed 1 does."""
    candidates = [{"label": f"random eps {e}", "scorer": {"name": "random"},
                   "allocation": {"name": "alpha_pruning", "options": {"epsilon": e}}} for e in (0.3, 0.6)]
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=candidates, choice_seed=0)
    results, records = {}, {}
    for seed in (0, 1):
        results[seed] = run(config({**data, "seed": seed}), show_progress=False)
        records[seed] = json.loads((results[seed].run_dir / "select.json").read_text())["caps"]
    assert all(c["reused"]["heldout"] for c in records[1]["candidates"])
    assert [c["value"] for c in records[1]["candidates"]] == [c["value"] for c in records[0]["candidates"]]
    chosen = records[1]["chosen"]
    assert chosen == records[0]["chosen"] and records[1]["choice_seed"] == 0
    own = next(c for c in candidates if c["label"] == chosen)
    single = run(config({**alone(data, own, "alone"), "seed": 1}), show_progress=False)
    applied = results[1].allocations["caps"].values
    assert applied == pytest.approx(single.allocations["caps"].values, abs=1e-12)
    assert applied != pytest.approx(results[0].allocations["caps"].values, abs=1e-6)


def test_a_candidate_grid_stands_for_one_candidate_per_value():
    from layerif_core.allocators.options import SelectOptions

    opts = SelectOptions.model_validate({"heldout": HELDOUT, "candidates": [
        CANDIDATES[0], {**CANDIDATES[1], "grid": {"epsilon": [0.1, 0.3], "overflow": ["clip"]}}]})
    assert [c.label for c in opts.candidates] == [
        "uniform", "depth ramp (epsilon 0.1, overflow clip)", "depth ramp (epsilon 0.3, overflow clip)"]
    assert [c.allocation.options for c in opts.candidates[1:]] == [
        {"epsilon": 0.1, "overflow": "clip"}, {"epsilon": 0.3, "overflow": "clip"}]
    with pytest.raises(ValueError, match="grid must map allocator options to non-empty lists"):
        SelectOptions.model_validate({"heldout": HELDOUT,
                                      "candidates": [{**CANDIDATES[1], "grid": {"epsilon": []}}]})


def test_a_grid_point_the_budget_rules_out_is_skipped_and_recorded(tiny_dir, tmp_path):
    """A search skips the settings that cannot meet the budget at this sparsity (ATP's search keeps
    its beta where every layer stays in [0, 1]); select records them and chooses among the rest.
    With choice_seed the chosen candidate is re-allocated with the run's seed: the right one,
    although a skipped point stands before it in the list."""
    ramp = {"label": "capped ramp", "scorer": {"name": "depth"},
            "allocation": {"name": "alpha_pruning", "options": {"epsilon": 0.2}},
            "grid": {"max_sparsity": [0.3, 0.9]}}
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=[ramp], choice_seed=0)
    result = run(config({**data, "seed": 1}), show_progress=False)
    record = json.loads((result.run_dir / "select.json").read_text())["caps"]
    assert [c["label"] for c in record["candidates"]] == ["capped ramp (max_sparsity 0.9)"]
    assert record["chosen"] == "capped ramp (max_sparsity 0.9)"
    assert list(record["infeasible"]) == ["capped ramp (max_sparsity 0.3)"]
    reason = record["infeasible"]["capped ramp (max_sparsity 0.3)"]
    assert "cannot be reached with layers clipped to 0.3" in reason
    assert result.allocations["caps"].details["select"]["infeasible"] == ["capped ramp (max_sparsity 0.3)"]
    # no grid point meets the budget: one line saying so
    data = with_options(data, candidates=[{**ramp, "grid": {"max_sparsity": [0.2, 0.3]}}])
    none = r"^select: no candidate meets the budget at sparsity 0.5 \("
    with pytest.raises(BudgetError, match=none) as info:
        run(config({**data, "name": "none"}), show_progress=False)
    assert "\n" not in str(info.value)


def test_candidates_with_one_scorer_compute_its_scores_once(tiny_dir, tmp_path):
    """ATP tuned: one scorer, several allocator options; the scores are computed once."""
    candidates = [{"label": f"eps {e}", "scorer": {"name": "htsr_alpha"},
                   "allocation": {"name": "alpha_pruning", "options": {"epsilon": e}}} for e in (0.1, 0.3)]
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=candidates)
    result = run(config(data), show_progress=False)
    found = json.loads((result.run_dir / "select.json").read_text())["caps"]["candidates"]
    assert [c["reused"]["scores"] for c in found] == [False, True]
    assert found[0]["allocation"]["values"] != found[1]["allocation"]["values"]


# --- refused before any model loads -------------------------------------------------------------

def refused(data: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        check_components(config(data))
    assert "\n" not in str(info.value)


def test_heldout_data_of_the_reported_metric_are_refused(tmp_path):
    heldout = copy.deepcopy(HELDOUT)
    heldout["options"].update(split="test", skip=100)  # other records, but the evaluation's split
    refused(with_options(base(tmp_path, tmp_path), heldout=heldout), ConfigError,
            r"heldout data .* are those of the evaluation 'perplexity'.*choose another split")


def test_heldout_overlapping_the_calibration_is_refused_and_disjoint_ranges_pass(tmp_path):
    data = base(tmp_path, tmp_path)
    data["application"]["options"]["calibration"] = {"source": "bundled:wikitext2", "split": "validation",
                                                     "limit": 20, "samples": 4, "seqlen": 32}
    heldout = {"name": "perplexity", "options": {"source": "bundled:wikitext2", "split": "validation",
                                                 "skip": 10, "limit": 20}}
    refused(with_options(data, heldout=heldout), ConfigError,
            r"overlap the prune calibration .*records \[0, 20\).*set the calibration.s limit")
    heldout["options"]["skip"] = 20
    check_components(config(with_options(data, heldout=heldout)))


def test_heldout_overlapping_the_task_train_split_used_for_calibration_is_refused(tmp_path):
    data = base(tmp_path, tmp_path)
    del data["application"]["options"]["calibration"]["source"]  # calibration: the task's train split
    heldout = copy.deepcopy(HELDOUT)
    heldout["options"]["split"] = "train"
    refused(with_options(data, heldout=heldout), ConfigError, "overlap the prune calibration")
    heldout["options"]["skip"] = 6  # the task reads train records [0, 6)
    check_components(config(with_options(data, heldout=heldout)))


def test_a_heldout_evaluator_without_a_source_is_refused(tmp_path):
    heldout = {"name": "lm_eval", "options": {"tasks": ["layerif_capitals"]}}
    refused(with_options(base(tmp_path, tmp_path), heldout=heldout), ConfigError, "names no `source`")


@pytest.mark.parametrize(("candidate", "error", "match"), [
    ({"label": "typo", "scorer": {"name": "depht"}, "allocation": {"name": "uniform_sparsity"}},
     PluginError, r"select candidate 'typo': unknown scorer 'depht' \(did you mean 'depth'\?\)"),
    ({"label": "nope", "scorer": {"name": "depth"}, "allocation": {"name": "alpha_pruningg"}},
     PluginError, "select candidate 'nope': unknown allocator 'alpha_pruningg'"),
    ({"label": "opt", "scorer": {"name": "depth"},
      "allocation": {"name": "alpha_pruning", "options": {"epsilonn": 0.1}}},
     ConfigError, "select candidate 'opt': allocator 'alpha_pruning' has no option 'epsilonn'"),
    ({"label": "budget", "scorer": {"name": "depth"},
      "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.7}}},
     ConfigError, "select candidate 'budget' sets sparsity 0.7 but select's is 0.5; remove it"),
    ({"label": "nested", "scorer": {"name": "depth"}, "allocation": {"name": "select"}},
     ConfigError, "select candidate 'nested' is itself a select"),
    ({"label": "lora", "scorer": {"name": "depth"}, "layers": {"lora_only": True},
      "allocation": {"name": "uniform_sparsity"}},
     ConfigError, "select candidate 'lora': it scores LoRA tensors"),
])
def test_a_bad_candidate_is_refused_naming_it(tmp_path, candidate, error, match):
    refused(with_options(base(tmp_path, tmp_path), candidates=[CANDIDATES[0], candidate]), error, match)


@pytest.mark.parametrize(("candidates", "match"), [
    ([], "option 'candidates': List should have at least 1 item"),
    ([CANDIDATES[0], CANDIDATES[0]], r"candidate labels must be unique; repeated: \['uniform'\]"),
])
def test_an_empty_or_repeating_candidate_list_is_refused(tmp_path, candidates, match):
    refused(with_options(base(tmp_path, tmp_path), candidates=candidates), ConfigError, match)


def test_select_without_an_application_is_refused(tmp_path):
    refused(base(tmp_path, tmp_path, application=None), ConfigError, "add an `application:` section")


def test_select_outside_a_run_says_where_it_runs():
    select = get_registry().build("allocator", "select", {"candidates": CANDIDATES, "heldout": HELDOUT})
    with pytest.raises(ConfigError, match="use it as the allocation of `layerif run`"):
        select.allocate(None, None)


def test_a_candidate_failing_while_it_runs_names_it_and_leaves_no_choice(tiny_dir, tmp_path):
    bad = {"label": "capped", "scorer": {"name": "depth"},
           "allocation": {"name": "alpha_pruning", "options": {"max_sparsity": 0.3}}}
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=[CANDIDATES[0], bad])
    with pytest.raises(LayerifError, match=r"^select candidate 'capped' failed: target sparsity 0.5 "
                                           r"cannot be reached") as info:
        run(config(data), show_progress=False)
    assert "\n" not in str(info.value)
    run_dir = tmp_path / "sel"
    assert not (run_dir / "allocation.json").exists()
    assert "caps" not in json.loads((run_dir / "select.json").read_text() if (run_dir / "select.json")
                                    .exists() else "{}")


def test_the_cli_prints_a_failing_candidate_in_one_line_with_exit_code_2(tiny_dir, tmp_path):
    import yaml

    from layerif_core.cli import app

    bad = {"label": "capped", "scorer": {"name": "depth"},
           "allocation": {"name": "alpha_pruning", "options": {"max_sparsity": 0.3}}}
    path = tmp_path / "select.yaml"
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=[CANDIDATES[1], bad])
    path.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(app, ["--quiet", "run", str(path)])
    assert out.exit_code == 2
    lines = [x for x in out.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "select candidate 'capped' failed" in lines[0]
    # the candidate that finished is kept through the failed run's clean-up, and reused
    result = run(config(with_options(data, candidates=[CANDIDATES[1]])), show_progress=False)
    found = json.loads((result.run_dir / "select.json").read_text())["caps"]["candidates"]
    assert found[0]["reused"] == {"scores": True, "heldout": True}


def test_a_metric_the_heldout_evaluator_does_not_return_is_named_with_the_ones_it_does(tiny_dir, tmp_path):
    data = with_options(base(tiny_dir, tmp_path, evaluation=[]), candidates=[CANDIDATES[0]],
                        metric="perplexity/heldoot")
    with pytest.raises(ConfigError, match=r"metric 'perplexity/heldoot' is not among the held-out "
                                          r"evaluator's metrics \['perplexity/heldout', "):
        run(config(data), show_progress=False)
