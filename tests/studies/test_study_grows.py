"""A study grows: arms, grid values and seeds added to its file run only the new cells and keep the
finished ones, and an arm without a finished cell may change; a change to what a finished cell ran
(its arm, the base config) or a finished cell taken away is refused with one line, and --force
starts over."""

from __future__ import annotations

import copy

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app


def run(path, *args):
    return CliRunner().invoke(app, ["--quiet", "study", str(path), *args])


@pytest.fixture
def first(tiny_dir, tmp_path):  # noqa: F811
    """The tiny study at one sparsity and one seed, finished: two cells (uniform, LayerIF ALL)."""
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.3]}, seeds=[0])
    path = write_study(tmp_path / "s.yaml", data)
    assert run(path).exit_code == 0
    cells = tmp_path / "out" / "tiny" / "cells"
    return data, path, cells, {p.name: p.read_bytes() for p in cells.glob("*.json")}


def test_added_arm_grid_value_and_seed_run_only_the_new_cells(first):
    data, path, cells, before = first
    grown = copy.deepcopy(data)
    grown["arms"].append({"label": "random", "overrides": {"scorer.name": "random"}})
    grown["grid"]["allocation.options.sparsity"].append(0.6)
    grown["seeds"].append(1)
    write_study(path, grown)
    result = run(path)
    assert result.exit_code == 0, result.output
    after = {p.name: p.read_bytes() for p in cells.glob("*.json")}
    assert len(after) == 3 * 2 * 2  # arms x sparsities x seeds
    assert all(after[name] == content for name, content in before.items())  # kept, not rerun


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["arms"][1]["overrides"].update({"scorer.aggregator.name": "helpful_sum"}),
     "arm 'LayerIF ALL' changed"),
    (lambda d: d["arms"].pop(1), "arm 'LayerIF ALL' is gone"),
    (lambda d: d.update(seeds=[1]), "seed 0 is gone"),
    (lambda d: d["grid"].update({"allocation.options.sparsity": [0.6]}), "grid point"),
    (lambda d: d["base"].update(batch_size=2), "the base run config differs"),
])
def test_a_change_to_finished_cells_is_refused_and_force_starts_over(first, change, words):
    data, path, cells, before = first
    changed = copy.deepcopy(data)
    change(changed)
    write_study(path, changed)
    result = run(path)
    assert result.exit_code == 2, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "--force" in errors[0], result.output
    assert {p.name: p.read_bytes() for p in cells.glob("*.json")} == before  # nothing lost
    if words == "arm 'LayerIF ALL' changed":
        assert run(path, "--force").exit_code == 0
        assert {p.name for p in cells.glob("*.json")} == set(before)
        assert any(p.read_bytes() != before[p.name] for p in cells.glob("*.json"))  # rerun


def test_an_arm_without_finished_cells_may_change(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.3]}, seeds=[0])
    path = write_study(tmp_path / "s.yaml", data)
    assert run(path, "--arm", "uniform").exit_code == 0
    changed = copy.deepcopy(data)
    changed["arms"][1]["overrides"]["scorer.aggregator.name"] = "helpful_sum"
    result = run(write_study(path, changed))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "tiny" / "cells").glob("*.json"))) == 2
