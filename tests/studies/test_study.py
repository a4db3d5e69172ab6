"""`layerif study` end to end on a tiny random Llama: 2 arms × 2 sparsities × 2 seeds of Wanda
pruning, perplexity and achieved sparsity; the report's numbers against hand computations, shared
scores counted, resume after SIGKILL, shards, a failing cell."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats
from study_helpers import PPL, tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.estimators.grad_dot import GradDot

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(app, ["--quiet", *args])


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):  # noqa: F811
    """The study run once through the CLI, counting the estimator's influence computations."""
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp / "tiny.yaml", tiny_study(tiny_dir, tmp / "out"))
    calls = []
    real = GradDot.influence

    def counted(self, ctx, train, query):
        calls.append(ctx.seed)
        return real(self, ctx, train, query)

    GradDot.influence = counted
    try:
        result = invoke("study", str(path))
    finally:
        GradDot.influence = real
    assert result.exit_code == 0, result.output
    return {"path": path, "dir": tmp / "out" / "tiny", "output": result.output, "calls": calls}


def cells(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((directory / "cells").glob("*.json"))]


def test_csv_has_every_cell_and_metric(finished):
    rows = list(csv.DictReader((finished["dir"] / "results.csv").open()))
    found = {(r["arm"], float(r["allocation.options.sparsity"]), int(r["seed"]), r["metric"]) for r in rows}
    expected = {(arm, s, seed, m) for arm in ("uniform", "LayerIF ALL") for s in (0.3, 0.6)
                for seed in (0, 1) for m in (PPL, "sparsity/achieved")}
    assert found == expected and len(rows) == 16
    by_cell = {c["id"]: c for c in cells(finished["dir"])}
    for r in rows:
        assert float(r["value"]) == by_cell[r["cell"]]["metrics"][r["metric"]]


def test_summary_mean_and_ci_equal_a_hand_computation(finished):
    values = [c["metrics"][PPL] for c in cells(finished["dir"])
              if c["arm"] == "LayerIF ALL" and c["grid"]["allocation.options.sparsity"] == 0.6]
    assert len(values) == 2
    mean = statistics.mean(values)
    ci = stats.t.ppf(0.975, df=1) * statistics.stdev(values) / math.sqrt(2)
    summary = json.loads((finished["dir"] / "summary.json").read_text())
    ppl = next(m for m in summary["metrics"] if m["name"] == PPL)
    row = next(r for r in ppl["points"][1]["rows"] if r["arm"] == "LayerIF ALL")
    assert ppl["points"][1]["grid"] == {"allocation.options.sparsity": 0.6}
    assert row["mean"] == pytest.approx(mean, rel=1e-12)
    assert row["ci95"] == pytest.approx(ci, rel=1e-12)
    assert f"{mean:.4g} ± {ci:.4g}" in (finished["dir"] / "summary.md").read_text()


def test_paired_p_value_equals_scipys(finished):
    by = {(c["arm"], c["seed"]): c["metrics"][PPL] for c in cells(finished["dir"])
          if c["grid"]["allocation.options.sparsity"] == 0.3}
    arm, control = [by[("LayerIF ALL", s)] for s in (0, 1)], [by[("uniform", s)] for s in (0, 1)]
    expected = stats.ttest_rel(arm, control).pvalue
    summary = json.loads((finished["dir"] / "summary.json").read_text())
    ppl = next(m for m in summary["metrics"] if m["name"] == PPL)
    paired = next(r for r in ppl["points"][0]["rows"] if r["arm"] == "LayerIF ALL")["paired"]
    assert paired["p"] == pytest.approx(expected, rel=1e-12)
    diffs = [a - c for a, c in zip(arm, control, strict=True)]
    assert paired["diff_mean"] == pytest.approx(statistics.mean(diffs))
    wins = sum(a < c for a, c in zip(arm, control, strict=True))  # perplexity: lower wins
    assert (paired["wins"], paired["losses"]) == (wins, 2 - wins)


def test_shared_scores_are_computed_once(finished):
    # LayerIF's scores depend on the seed (bundled data is drawn by seed), not on the sparsity:
    # one influence computation per seed for its 4 cells; the uniform scorer's once for all 4
    assert sorted(finished["calls"]) == [0, 1]
    assert "shared work computed: scores 3, adapters 0, dense 1" in " ".join(finished["output"].split())
    reused = [c["scores"]["reused"] for c in cells(finished["dir"])]
    assert reused.count(False) == 3 and reused.count(True) == 5


def test_report_html_is_self_contained(finished):
    page = (finished["dir"] / "report.html").read_text()
    plots = sorted(p.name for p in (finished["dir"] / "plots").glob("*.png"))
    assert page.count("src='data:image/png;base64,") == len(plots) >= 4
    assert "src='http" not in page and "<link" not in page
    assert "LayerIF ALL" in page and "allocation.options.sparsity" in page  # tables and config


def test_rerun_skips_finished_cells(finished):
    before = {p.name: p.read_text() for p in (finished["dir"] / "cells").glob("*.json")}
    result = invoke("study", str(finished["path"]))
    assert result.exit_code == 0, result.output
    assert "0 cells run, 8 finished earlier (skipped)" in " ".join(result.output.split())
    assert {p.name: p.read_text() for p in (finished["dir"] / "cells").glob("*.json")} == before


def test_two_shards_and_report_equal_one_unsharded_run(finished, tiny_dir, tmp_path):  # noqa: F811
    path = write_study(tmp_path / "tiny.yaml", tiny_study(tiny_dir, tmp_path / "out"))
    for shard in ("0/2", "1/2"):
        result = invoke("study", str(path), "--shard", shard)
        assert result.exit_code == 0, result.output
        assert not (tmp_path / "out" / "tiny" / "summary.md").exists()  # a shard writes no report
    result = invoke("study", "report", str(tmp_path / "out" / "tiny"))
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "summary.md", "summary.json"):
        assert (tmp_path / "out" / "tiny" / name).read_text() == (finished["dir"] / name).read_text()


def test_arm_seed_and_grid_run_only_those_cells_with_the_full_runs_results(finished, tiny_dir,  # noqa: F811
                                                                           tmp_path):
    path = write_study(tmp_path / "tiny.yaml", tiny_study(tiny_dir, tmp_path / "out"))
    result = invoke("study", str(path), "--arm", "LayerIF_ALL", "--seed", "1")  # the id spelling
    assert result.exit_code == 0, result.output
    result = invoke("study", str(path), "--arm", "uniform", "--grid", "sparsity=0.6")
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in cells(tmp_path / "out" / "tiny")}
    want = {r["id"]: r for r in cells(finished["dir"])}
    assert sorted((r["arm"], r["seed"], r["grid"]["allocation.options.sparsity"]) for r in got.values()) == [
        ("LayerIF ALL", 1, 0.3), ("LayerIF ALL", 1, 0.6), ("uniform", 0, 0.6), ("uniform", 1, 0.6)]
    for cell_id, record in got.items():
        assert record["metrics"] == want[cell_id]["metrics"]
    assert (tmp_path / "out" / "tiny" / "summary.md").is_file()  # the report of what finished


def test_a_killed_study_resumes_and_reruns_only_unfinished_cells(tiny_dir, tmp_path):  # noqa: F811
    path = write_study(tmp_path / "tiny.yaml", tiny_study(tiny_dir, tmp_path / "out"))
    directory = tmp_path / "out" / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from layerif_core.cli import main; main()", "--quiet",
                             "study", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = None
    deadline = time.monotonic() + 300
    while running is None and time.monotonic() < deadline and proc.poll() is None:
        done = {p.stem for p in (directory / "cells").glob("*.json")}
        started = {p.name for p in (directory / "runs").glob("*") if p.is_dir()}
        if len(done) >= 2 and started - done:  # in the middle of a cell
            running = (started - done).pop()
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.01)
    proc.wait()
    assert running is not None, "the study ended before a cell could be interrupted"
    kept = {p.stem: p.read_text() for p in (directory / "cells").glob("*.json")}
    assert running not in kept and 2 <= len(kept) < 8
    result = invoke("study", str(path))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{8 - len(kept)} cells run, {len(kept)} finished earlier (skipped)" in text
    after = {p.stem: p.read_text() for p in (directory / "cells").glob("*.json")}
    assert len(after) == 8 and all(after[k] == v for k, v in kept.items())


def test_a_failing_cell_is_recorded_and_the_others_finish(tiny_dir, tmp_path):  # noqa: F811
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.3]}, seeds=[0])
    # owl_sparsity with lamda 0.5 puts layers at 0.3 - 0.5 < 0: the allocator raises
    data["arms"].append({"label": "broken", "overrides": {
        "allocation": {"name": "owl_sparsity", "options": {"lamda": 0.5}}}})
    result = invoke("study", str(write_study(tmp_path / "s.yaml", data)))
    assert result.exit_code == 1, result.output
    found = {c["arm"]: c for c in cells(tmp_path / "out" / "tiny")}
    assert found["broken"]["status"] == "failed" and found["broken"]["error"]["type"] == "BudgetError"
    assert "owl_sparsity" in found["broken"]["error"]["message"]
    assert found["uniform"]["status"] == found["LayerIF ALL"]["status"] == "ok"
    assert found["broken"]["id"] in result.output
    assert found["broken"]["id"] in (tmp_path / "out" / "tiny" / "summary.md").read_text()


def test_the_paper_route_is_an_arm(tiny_dir, tmp_path):  # noqa: F811
    """An arm that LoRA-fine-tunes, scores with datainf through the adapter (layers.lora_only), and
    prunes the base model; its adapter is trained once per seed and shared by the grid's cells."""
    data = tiny_study(tiny_dir, tmp_path / "out", seeds=[0])
    data["arms"].append({"label": "LayerIF paper route", "overrides": {
        "layers.lora_only": True, "scorer.estimator.name": "datainf",
        "finetune": {"rank": 2, "alpha": 4, "epochs": 1, "batch_size": 3,
                     "target_modules": ["q_proj", "v_proj"]}}})
    result = invoke("study", str(write_study(tmp_path / "s.yaml", data)))
    assert result.exit_code == 0, result.output
    assert "scores 3, adapters 1, dense 1" in " ".join(result.output.split())
    found = [c for c in cells(tmp_path / "out" / "tiny") if c["arm"] == "LayerIF paper route"]
    assert len(found) == 2 and all(c["status"] == "ok" for c in found)
    for c in found:  # pruned base weights at the target sparsity (16 inputs per row: ⌊16·s⌋)
        s = c["grid"]["allocation.options.sparsity"]
        assert abs(c["metrics"]["sparsity/achieved"] - s) <= 1 / 16
        assert len(c["allocation"]["values"]) == 3
    adapters = list((tmp_path / "out" / "tiny" / "shared" / "adapters").glob("*/adapter_config.json"))
    assert len(adapters) == 1
    from layerif_core.study.plan import plan_study

    adapter = [s for s in plan_study(tmp_path / "s.yaml", "H100").stages if s.kind == "adapter"]
    assert [(s.runs, s.done) for s in adapter] == [(1, 1)]  # the plan finds it on disk
