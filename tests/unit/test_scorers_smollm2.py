"""Every baseline scorer on the real SmolLM2-135M-Instruct, then compare-scores over their runs."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from conftest import make_config
from layerif_core.cli import app
from layerif_core.pipeline import compute_layer_scores, open_run

SCORERS = {
    "htsr_alpha": {},
    "owl_outlier": {"limit": 4},
    "block_influence": {"limit": 4},
    "gradient_norm": {"limit": 2},
    "random": {},
}


@pytest.mark.slow
def test_baselines_on_smollm2_and_compare(tmp_path, smollm2):
    model, tokenizer = smollm2
    runs = {}
    for name, options in SCORERS.items():
        # HT-SR on two matrices per block keeps the eigendecompositions to 60
        layers = {"regex": "o_proj|down_proj"} if name == "htsr_alpha" else {}
        cfg = make_config(tmp_path, name=name, layers=layers, scorer={"name": name, "options": options})
        ctx = open_run(cfg, show_progress=False, model=model, tokenizer=tokenizer)
        runs[name] = (ctx.run_dir.path, compute_layer_scores(ctx)["arith"])
    n_layers = model.config.num_hidden_layers
    for name, (_, scores) in runs.items():
        assert scores.scorer == name and len(scores.values) == n_layers
        assert all(math.isfinite(v) for v in scores.values.tolist())
    alphas = runs["htsr_alpha"][1].values
    assert (alphas > 1).all()  # a fitted tail exponent of a density
    owl = runs["owl_outlier"][1].values
    assert ((owl >= 0) & (owl <= 100)).all() and (owl > 0).any()
    bi = runs["block_influence"][1].values
    assert ((bi > 0) & (bi <= 2)).all()
    assert int(bi.argmax()) == 0  # ShortGPT: the first block changes its input the most
    assert all(p.grad is None for p in model.parameters())

    out = tmp_path / "compare.png"
    res = CliRunner().invoke(app, ["compare-scores", *(str(p) for p, _ in runs.values()),
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [s["scorer"] for s in saved["series"]] == list(SCORERS)
    assert all(saved["spearman"][i][i] == pytest.approx(1.0) for i in range(len(SCORERS)))
