"""The uniform, random and depth controls, and that `layerif scores` records whichever scorer ran."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_ctx
from layerif_core.pipeline import allocate, compute_layer_scores, score_task
from layerif_core.testing import save_tiny_model


def _random(tmp_path, **options):
    ctx = make_ctx(tmp_path, seed=3, scorer={"name": "random", "options": options})
    return score_task(ctx, ctx.config.tasks[0])


def test_uniform_scores_every_layer_equally(tmp_path):
    ctx = make_ctx(tmp_path, scorer={"name": "uniform"})
    scores = score_task(ctx, ctx.config.tasks[0])
    assert scores.values.tolist() == [1.0] * len(ctx.layer_map)
    assert scores.scorer == "uniform"


def test_depth_ramps_the_sparsity_linearly_with_the_layer_index(tmp_path):
    ctx = make_ctx(tmp_path, scorer={"name": "depth"},
                   allocation={"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}})
    scores = score_task(ctx, ctx.config.tasks[0])
    n = len(ctx.layer_map)
    assert scores.values.tolist() == list(range(n)) and scores.higher_is_better is False
    sparsity = allocate(ctx, {"arith": scores})["arith"].values
    steps = [b - a for a, b in zip(sparsity, sparsity[1:], strict=False)]
    assert all(s > 0 for s in steps) and max(steps) - min(steps) < 1e-12
    assert sparsity[0] * 1.2 == pytest.approx(sparsity[-1] * 0.8)  # the ends of [1 − ε, 1 + ε]


def test_falling_depth_mirrors_the_rising_ramp_and_its_expert_allocation(tmp_path):
    """direction: falling scores layer l with L - 1 - l, so alphalora_experts gives the first layer
    what rising gives the last: the rising allocation read backwards."""
    experts = {"name": "alphalora_experts", "options": {"total": 30, "beta": 3.0}}
    rising = make_ctx(tmp_path / "r", scorer={"name": "depth"}, allocation=experts)
    falling = make_ctx(tmp_path / "f", scorer={"name": "depth", "options": {"direction": "falling"}},
                       allocation=experts)
    up, down = (score_task(c, c.config.tasks[0]) for c in (rising, falling))
    n = len(rising.layer_map)
    assert down.values.tolist() == [float(n - 1 - i) for i in range(n)] and down.higher_is_better is False
    assert down.details == {"direction": "falling"} and up.details == {"direction": "rising"}
    more_up = allocate(rising, {"arith": up})["arith"].values
    more_down = allocate(falling, {"arith": down})["arith"].values
    assert sum(more_down) == 30 and more_down == more_up[::-1] and more_down[0] > more_down[-1]


def test_random_is_deterministic_for_a_seed(tmp_path):
    a = _random(tmp_path / "a", seed=11)
    b = _random(tmp_path / "b", seed=11)
    c = _random(tmp_path / "c", seed=12)
    assert torch.equal(a.values, b.values)
    assert not torch.equal(a.values, c.values)
    assert ((a.values >= 0) & (a.values < 1)).all()
    assert a.details["seed"] == 11


def test_random_defaults_to_the_run_seed(tmp_path):
    assert torch.equal(_random(tmp_path / "a").values, _random(tmp_path / "b", seed=3).values)
    assert _random(tmp_path / "c").details["seed"] == 3


def test_scores_json_records_the_scorer(tmp_path):
    ctx = make_ctx(tmp_path, scorer={"name": "random"})
    compute_layer_scores(ctx)
    data = json.loads(ctx.run_dir.file("scores.json").read_text())
    assert data["arith"]["scorer"] == "random"
    assert data["arith"]["higher_is_better"] is False
    assert len(data["arith"]["values"]) == len(ctx.layer_map)


def test_cli_scores_accepts_a_baseline_scorer(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from layerif_core.cli import app

    model_dir = tmp_path / "tiny"
    save_tiny_model(model_dir)
    config = {"name": "bi", "output_dir": str(tmp_path / "runs"), "model": {"source": str(model_dir)},
              "tasks": [{"name": "capitals",
                         "train": {"source": "bundled:capitals", "limit": 4, "max_length": 96},
                         "validation": {"source": "bundled:capitals", "split": "validation",
                                        "limit": 2, "max_length": 96}}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(app, ["--quiet", "scores", str(path), "--scorer", "block_influence"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "runs" / "bi" / "scores.json").read_text())
    assert data["capitals"]["scorer"] == "block_influence"
    assert data["capitals"]["higher_is_better"] is True
