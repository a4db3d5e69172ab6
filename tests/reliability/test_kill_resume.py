"""Kill -9 at every stage, then rerun: a real CLI subprocess is SIGKILLed at a chosen point (by a
``sitecustomize`` of this suite, see ``_killer.py``), then the same command runs again. The rerun must
end with the outputs of an uninterrupted run and reuse every stage that had finished before the kill
(read from the manifest's ``steps`` and the run log)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from _harness import REPO, base_config, cli_command, half_written, invoke, save_tiny, sub_env, write_config
from safetensors.torch import load_file

KILLER = Path(__file__).with_name("_killer.py")
ALLOC = {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}}
PRUNE = {"name": "prune", "options": {"pruner": "wanda", "calibration": {"samples": 4, "seqlen": 32}}}
MOE = {"name": "lora_moe", "options": {"rank": 2, "max_steps": 4, "save_every": 1, "batch_size": 4,
                                       "target_modules": ["q_proj", "up_proj"]}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs (references, reruns) use one thread like the killed subprocess (sub_env):
    a bitwise comparison must not depend on how a matmul's sums were split over threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(one_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    model = save_tiny(root / "tiny")
    site = root / "site"
    site.mkdir()
    shutil.copy(KILLER, site / "sitecustomize.py")
    configs = {
        "score": base_config(root / "ref", model, allocation=ALLOC),
        "prune": base_config(root / "ref", model, name="p", allocation=ALLOC, application=PRUNE),
        "moe": base_config(root / "ref", model, name="m", application=MOE,
                           allocation={"name": "alphalora_experts", "options": {"total": 7}}),
    }
    refs = {}
    for kind, cfg in configs.items():  # the uninterrupted runs
        path = write_config(root / f"{kind}.yaml", cfg)
        scores = str(refs.get("score", ""))
        args = {"score": ["run", str(path)], "prune": ["prune", str(path), "--scores", scores],
                "moe": ["moe", str(path), "--scores", scores]}[kind]
        out = invoke(*args)
        assert out.exit_code == 0, out.output
        refs[kind] = root / "ref" / cfg["name"]
    return {"root": root, "site": site, "configs": configs, "refs": refs}


def kill_then_rerun(setup, tmp_path, kind: str, kill: dict, command: list[str]) -> tuple[Path, dict]:
    """Run ``command`` until the kill, then again to the end; returns the run directory and the
    manifest's steps as the killed run left them."""
    cfg = dict(setup["configs"][kind], output_dir=str(tmp_path / "runs"))
    path = write_config(tmp_path / f"{kind}.yaml", cfg)
    args = [a.replace("{config}", str(path)).replace("{scores}", str(setup["refs"]["score"] / "scores.json"))
            for a in command]
    import subprocess

    proc = subprocess.run(cli_command(*args), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=sub_env(setup["site"], RELIABILITY_KILL=json.dumps(kill)))
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    run = tmp_path / "runs" / cfg["name"]
    before = steps(run) if (run / "manifest.json").is_file() else {}
    out = invoke(*args)
    assert out.exit_code == 0, out.output
    assert half_written(run) == []
    return run, before


def steps(run: Path) -> dict[str, dict]:
    return json.loads((run / "manifest.json").read_text())["steps"]


def stage(name: str) -> str:
    """'eigen', 'lambda' or 'influence' for a manifest step name."""
    return name.rsplit("/", 1)[-1] if name.startswith("factors/") else name.split(".")[0]


def assert_finished_stages_reused(run: Path, before: dict, finished: set[str]) -> None:
    """The killed run had finished exactly ``finished``; the rerun recomputed none of them (each is
    reused, or not needed at all and left as it was)."""
    assert {stage(n) for n, e in before.items() if e.get("fingerprint")} == finished, before
    after = steps(run)
    for name, entry in before.items():
        assert after[name].get("reused") is True or after[name] == entry, (name, after[name])


def assert_same_scores(run: Path, ref: Path) -> None:
    got, want = (json.loads((d / "scores.json").read_text()) for d in (run, ref))
    assert got.keys() == want.keys()
    for task in want:
        g, w = torch.tensor(got[task]["values"]), torch.tensor(want[task]["values"])
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-12 * float(w.abs().max())), (g, w)


SCORE_STAGES = [
    # (id, where the kill happens, stages the rerun must reuse)
    ("during-covariance", {"track": "^covariance factors", "at": 1}, set()),
    ("between-covariance-and-correction", {"track": "^eigenvalue correction", "at": 0}, {"eigen"}),
    ("during-correction", {"track": "^eigenvalue correction", "at": 1}, {"eigen"}),
    ("during-score-pass", {"track": "^scores", "at": 1}, {"eigen", "lambda"}),
    ("after-scores-before-allocation", {"call": "layerif_core.pipeline:allocate"},
     {"eigen", "lambda", "influence"}),
]


@pytest.mark.parametrize(("kill", "finished"), [s[1:] for s in SCORE_STAGES],
                         ids=[s[0] for s in SCORE_STAGES])
def test_kill_during_scoring_then_rerun(setup, tmp_path, kill, finished):
    run, before = kill_then_rerun(setup, tmp_path, "score", kill, ["run", "{config}"])
    assert_same_scores(run, setup["refs"]["score"])
    assert json.loads((run / "allocation.json").read_text()) == json.loads(
        (setup["refs"]["score"] / "allocation.json").read_text())
    assert_finished_stages_reused(run, before, finished)


def test_kill_during_pruning_block_1_then_rerun(setup, tmp_path):
    run, before = kill_then_rerun(setup, tmp_path, "prune", {"track": "wanda pruning", "at": 1},
                          ["prune", "{config}", "--scores", "{scores}"])
    assert "resuming pruning at block 1 of 3" in (run / "log.txt").read_text()
    assert_finished_stages_reused(run, before, set())  # the scores came from --scores
    ref = setup["refs"]["prune"]
    for rel in ("masks.safetensors", "pruned_model/model.safetensors"):
        got, want = load_file(run / rel), load_file(ref / rel)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), rel  # bitwise
    assert not (run / "prune_state").exists()


def test_kill_during_lora_moe_training_then_rerun(setup, tmp_path):
    run, before = kill_then_rerun(setup, tmp_path, "moe", {"track": "LoRA-MoE training", "at": 2},
                          ["moe", "{config}", "--scores", "{scores}"])
    ref = setup["refs"]["moe"]
    got, want = (load_file(d / "lora_moe/adapter/lora_moe.safetensors") for d in (run, ref))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bitwise
    log, ref_log = (json.loads((d / "lora_moe/train_log.json").read_text()) for d in (run, ref))
    assert log["resumed_from"] == 2 and ref_log["resumed_from"] is None
    assert log["steps"] == ref_log["steps"]  # the same losses, step by step


def study(model: Path, out: Path) -> dict:
    """Two cells (a uniform control and LayerIF) of Wanda pruning with perplexity: the tiny study of
    ``tests/studies`` with one seed and no grid."""
    from studies.study_helpers import tiny_study

    return tiny_study(model, out, name="s", grid={}, seeds=[0], metrics=["perplexity/capitals"], arms=[
        {"label": "uniform", "control": True,
         "overrides": {"scorer.name": "uniform", "allocation.name": "uniform_sparsity",
                       "allocation.options": {"sparsity": 0.5}}},
        {"label": "LayerIF", "overrides": {}}])


def test_kill_during_a_study_cell_then_rerun(setup, tmp_path):
    import yaml

    model = setup["root"] / "tiny"
    results = {}
    for name in ("ref", "killed"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(study(model, tmp_path / name)))
        if name == "killed":  # the second cell, in the middle of its pruning (block 1 of 3)
            import subprocess

            kill = {"track": "wanda pruning", "at": 1, "occurrence": 2}
            proc = subprocess.run(cli_command("study", str(path)), cwd=REPO, capture_output=True, text=True,
                                  timeout=300, env=sub_env(setup["site"], RELIABILITY_KILL=json.dumps(kill)))
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
            assert len(list((tmp_path / name / "s" / "cells").glob("*.json"))) == 1
        out = invoke("study", str(path))
        assert out.exit_code == 0, out.output
        if name == "killed":
            assert "1 cells run, 1 finished earlier (skipped)" in " ".join(out.output.split())
        cells = sorted((tmp_path / name / "s" / "cells").glob("*.json"))
        results[name] = {p.name: json.loads(p.read_text())["metrics"] for p in cells}
    assert results["killed"] == results["ref"] and len(results["ref"]) == 2
