"""Bad study input: one line naming the fix, exit code 2, nothing written (checked before any model
loads: the model path of these studies does not even exist, except where a cell must run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from study_helpers import PPL, tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app

NO_MODEL = Path("/nonexistent/model")


def run(tmp_path: Path, data: dict, *extra: str):
    path = write_study(tmp_path / "s.yaml", data)
    return CliRunner().invoke(app, ["--quiet", "study", str(path), *extra])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _arms(*arms):
    return {"arms": list(arms)}


CASES = {
    "override path that does not exist": (
        _arms({"label": "a", "control": True, "overrides": {"scorer.nmae": "uniform"}}),
        "override path 'scorer.nmae' does not exist (did you mean 'scorer.name'?)"),
    "grid path that does not exist": (
        {"grid": {"allocaton.options.sparsity": [0.5]}},
        "override path 'allocaton.options.sparsity' does not exist (did you mean 'allocation.options"),
    "arm without a label": (
        _arms({"control": True, "overrides": {}}), "arm 1 has no label"),
    "two arms with one label": (
        _arms({"label": "x", "control": True}, {"label": "x"}), "two arms are labelled 'x'"),
    "no control arm": (
        _arms({"label": "x"}, {"label": "y"}), "no arm is the control; mark one with `control: true`"),
    "empty grid axis": (
        {"grid": {"allocation.options.sparsity": []}}, "grid axis 'allocation.options.sparsity' is empty"),
    "grid value of the wrong type (component option)": (
        {"grid": {"allocation.options.sparsity": [0.5, "high"]}},
        "arm 'uniform', allocation.options.sparsity=high, seed 0: allocator 'uniform_sparsity' "
        "option 'sparsity'"),
    "grid value of the wrong type (run config)": (
        {"grid": {"batch_size": [4, "big"], "allocation.options.sparsity": [0.5]}},
        "arm 'uniform', batch_size=big, allocation.options.sparsity=0.5, seed 0: 'batch_size': Input "
        "should be a valid integer"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_study_exits_2_with_one_line_before_any_model_loads(case, tmp_path):
    changes, message = CASES[case]
    result = run(tmp_path, tiny_study(NO_MODEL, tmp_path / "out", **changes))
    assert message in one_error_line(result)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("shard", ["2/2", "0/0", "1-2"])
def test_shard_out_of_range_exits_2(shard, tmp_path):
    result = run(tmp_path, tiny_study(NO_MODEL, tmp_path / "out"), "--shard", shard)
    assert "--shard" in one_error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (("--arm", "LayerIF AL"), "--arm 'LayerIF AL' is not an arm of this study (did you mean 'LayerIF ALL'?)"),
    (("--seed", "7"), "--seed 7 is not a seed of this study; its seeds: 0, 1"),
    (("--grid", "sparsity=0.4"), "--grid allocation.options.sparsity=0.4 is not a value of this study's "
                                 "grid; its values: 0.3, 0.6"),
    (("--grid", "sparsty=0.3"), "--grid 'sparsty=0.3' must be AXIS=VALUE with an axis of this study "
                                "(did you mean 'sparsity'?)"),
])
def test_an_arm_seed_or_grid_value_the_study_lacks_exits_2(extra, message, tmp_path):
    result = run(tmp_path, tiny_study(NO_MODEL, tmp_path / "out"), *extra)
    assert message in one_error_line(result)
    assert not (tmp_path / "out").exists()


def small(model_dir: Path, out: Path, **changes) -> dict:
    return tiny_study(model_dir, out, **{"grid": {"allocation.options.sparsity": [0.3]}, "seeds": [0],
                                         **changes})


def test_a_directory_made_by_another_study_config_needs_force(tiny_dir, tmp_path):  # noqa: F811
    first = run(tmp_path, small(tiny_dir, tmp_path / "out"))
    assert first.exit_code == 0, first.output
    other = small(tiny_dir, tmp_path / "out", seeds=[1])
    text = one_error_line(run(tmp_path, other))
    assert "made by a different study config" in text and "--force" in text
    forced = run(tmp_path, other, "--force")
    assert forced.exit_code == 0, forced.output
    seeds = {p.stem.rsplit("-", 2)[-2] for p in (tmp_path / "out" / "tiny" / "cells").glob("*.json")}
    assert seeds == {"s1"}  # started over: the seed-0 cells are gone


def test_a_metric_no_cell_reported_exits_2_without_a_report(tiny_dir, tmp_path):  # noqa: F811
    result = run(tmp_path, small(tiny_dir, tmp_path / "out", metrics=[PPL, "perplexity/capitls"]))
    text = one_error_line(result)
    assert "metric 'perplexity/capitls' was reported by no cell (did you mean 'perplexity/capitals'?)" in text
    assert not (tmp_path / "out" / "tiny" / "summary.md").exists()


def test_report_of_a_directory_that_is_no_study(tmp_path):
    result = CliRunner().invoke(app, ["--quiet", "study", "report", str(tmp_path)])
    assert "is not a study directory" in one_error_line(result)


EXECUTOR_CASES = {
    "a Slurm option without --executor slurm": (
        ["--partition", "gpu"], "--partition applies to --executor slurm only; add --executor slurm"),
    "a job option without an executor": (
        ["--time", "10"], "--time applies to --executor local or slurm"),
    "an unknown executor": (
        ["--executor", "slrum"],
        "--executor 'slrum' is not one of inline, local, slurm (did you mean 'slurm'?)"),
    "shards with an executor": (
        ["--executor", "local", "--shard", "0/2"], "--shard runs a share of the cells in this process"),
    "--no-wait with the local executor": (
        ["--executor", "local", "--no-wait"], "--no-wait needs --executor slurm"),
    "Slurm without --time": (
        ["--executor", "slurm"], "--executor slurm needs --time MINUTES"),
    "an sbatch option the study sets": (
        ["--executor", "slurm", "--time", "9", "--slurm-arg", "array=0-3"],
        "--slurm-arg array=... is set by the study"),
    "a --slurm-arg without a value": (
        ["--executor", "slurm", "--time", "9", "--slurm-arg", "account"], "must look like KEY=VALUE"),
    "Slurm on a machine without sbatch": (
        ["--executor", "slurm", "--time", "9"],
        "no `sbatch` on this machine's PATH; run from a Slurm login node"),
}


@pytest.mark.parametrize("case", list(EXECUTOR_CASES))
def test_bad_executor_options_exit_2_before_anything_is_written(case, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch, even on a Slurm login node
    options, message = EXECUTOR_CASES[case]
    result = run(tmp_path, tiny_study(NO_MODEL, tmp_path / "out"), *options)
    assert message in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_an_executor_without_submitit_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    result = run(tmp_path, tiny_study(NO_MODEL, tmp_path / "out"), "--executor", "local")
    assert "needs submitit: pip install submitit" in one_error_line(result)
    assert not (tmp_path / "out").exists()
