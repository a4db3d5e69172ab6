"""Bad options of the DLP, LSA, ALP and ATP components through the real CLI: exit code 2, one line
naming the option and the fix, nothing half-written. Option errors stop the run before any stage;
errors that need the model's layer count stop it at the allocation, after the scores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _harness import base_config, half_written, invoke, one_line, save_tiny, write_config

UNIFORM = {"name": "uniform"}


def _alloc(name: str, **options):
    return {"name": name, "options": options}


CASES = [  # (id, config changes, message regex, fails at the allocation)
    ("dlp-statistic", {"scorer": {"name": "dlp", "options": {"statistic": "medain"}}},
     r"scorer 'dlp' option 'statistic': Input should be 'median' or 'mean'", False),
    ("dlp-option-typo", {"scorer": {"name": "dlp", "options": {"statistc": "mean"}}},
     r"scorer 'dlp' has no option 'statistc' \(did you mean 'statistic'\?\)", False),
    ("lsa-fraction", {"scorer": {"name": "lsa", "options": {"fraction": 0}}},
     r"scorer 'lsa' option 'fraction': Input should be greater than 0", False),
    ("lsa-block", {"scorer": {"name": "lsa", "options": {"block_size": -1}}},
     r"scorer 'lsa' option 'block_size': Input should be greater than or equal to 0", False),
    ("alp-accumulate", {"scorer": {"name": "alp", "options": {"accumulate": "sums"}}},
     r"scorer 'alp' option 'accumulate': Input should be 'source' or 'sum'", False),
    ("alp-limit", {"scorer": {"name": "alp", "options": {"limit": 0}}},
     r"scorer 'alp' option 'limit': Input should be greater than or equal to 1", False),
    ("dlp-alpha", {"scorer": UNIFORM, "allocation": _alloc("dlp_sparsity", sparsity=0.5, alpha=-0.1)},
     r"allocator 'dlp_sparsity' option 'alpha': Input should be greater than or equal to 0", False),
    ("atp-no-beta", {"scorer": UNIFORM, "allocation": _alloc("atp_sparsity", sparsity=0.5)},
     r"allocator 'atp_sparsity' option 'beta': Field required", False),
    ("atp-sparsity", {"scorer": UNIFORM, "allocation": _alloc("atp_sparsity", sparsity=1.2, beta=0.1)},
     r"allocator 'atp_sparsity' option 'sparsity': Input should be less than 1", False),
    ("atp-beta-too-large", {"scorer": UNIFORM, "allocation": _alloc("atp_sparsity", sparsity=0.5, beta=0.9)},
     r"atp_sparsity: beta 0.9 puts a layer's sparsity outside \[0, 1\] .*; use beta <= 0.5\b", True),
    ("dlp-no-alpha", {"scorer": UNIFORM, "allocation": _alloc("dlp_sparsity", sparsity=0.05)},
     r"dlp_sparsity: the authors give no alpha for sparsity 0.05 .*; set allocation.options.alpha", True),
    ("dlp-too-wide", {"scorer": {"name": "depth"},
                      "allocation": _alloc("dlp_sparsity", sparsity=0.9, alpha=0.2)},
     r"dlp_sparsity: sparsity 0.9 with alpha 0.2 .*outside \[0, 1\); lower alpha", True),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.mark.parametrize(("changes", "message", "at_allocation"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_option_exits_2_with_one_line(tiny, tmp_path, changes, message, at_allocation):
    cfg = write_config(tmp_path / "c.yaml", base_config(tmp_path / "runs", tiny, **changes))
    result = invoke("run", str(cfg))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if "error:" in ln]
    assert len(lines) == 1, result.output
    assert re.search(message, one_line(lines[0])), one_line(lines[0])
    run_dir = tmp_path / "runs" / "r"
    assert half_written(run_dir) == []
    assert not (run_dir / "allocation.json").exists()
    assert (run_dir / "scores.json").exists() == at_allocation


def test_the_rules_appear_in_layerif_plugins():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    for name in ("dlp", "lsa", "alp", "dlp_sparsity", "atp_sparsity"):
        assert re.search(rf"\b{name}\b", text), name
