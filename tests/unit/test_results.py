"""Ranks of layer scores: ties share a rank, direction follows higher_is_better."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from layerif_core.results import LayerScores, rank_with_ties


def test_equal_scores_share_the_best_rank_of_their_group():
    assert rank_with_ties([0.0, 0.0, 0.5, 0.0, 0.2], higher_is_better=False) == [1, 1, 5, 1, 4]
    assert rank_with_ties([0.0, 0.0, 0.5, 0.0, 0.2], higher_is_better=True) == [3, 3, 1, 3, 2]
    assert rank_with_ties([3.0, 1.0, 2.0], higher_is_better=False) == [3, 1, 2]


def test_score_table_shows_the_direction_and_the_tie_rule(capsys):
    from layerif_core.cli import _print_scores

    scores = LayerScores(torch.tensor([0.0, 0.0, 2.0]), higher_is_better=False, scorer="layerif")
    _print_scores({"capitals": scores})
    text = capsys.readouterr().out
    out = " ".join(text.split())
    assert "score (lower = better)" in out
    assert "equal scores share the best rank of their group" in out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]
    assert [row for row in cells if row and row[0].isdigit()] == [["0", "0", "1"], ["1", "0", "1"],
                                                                  ["2", "2", "3"]]


def test_cli_help_lists_plugin_commands():
    from layerif_core.cli import app
    from layerif_core.registry import get_registry

    get_registry(app=app)
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0
    assert all(cmd in out.output for cmd in ("run", "plugins", "prune", "moe", "eval"))
