"""Caches are derived data: every artifact's checksum is in the manifest; a truncated, garbled or
swapped cache file (factors, influences, pruning state, LoRA-MoE training state) is deleted with a
warning and recomputed, and the run ends with the results of an undamaged one. A hand-edited
``--scores`` file is validated and its checksum recorded."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from _harness import REPO, base_config, cli_command, half_written, invoke, save_tiny, sub_env, write_config
from safetensors.torch import load_file

from layerif_core.artifacts import verify_run_dir

KILLER = Path(__file__).with_name("_killer.py")
ALLOC = {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.2}}
WARNING = "deleted it, it will be recomputed"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One finished EK-FAC run (scores, influences, factors, allocation) to damage copies of."""
    root = tmp_path_factory.mktemp("caches")
    model = save_tiny(root / "tiny")
    cfg = base_config(root / "runs", model, allocation=ALLOC)
    path = write_config(root / "c.yaml", cfg)
    out = invoke("run", str(path))
    assert out.exit_code == 0, out.output
    return {"root": root, "model": model, "cfg": cfg, "run": root / "runs" / "r"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def values(run: Path) -> torch.Tensor:
    return torch.tensor(json.loads((run / "scores.json").read_text())["caps"]["values"])


def test_every_artifact_has_its_checksum_in_the_manifest(first):
    run = first["run"]
    arts = json.loads((run / "manifest.json").read_text())["artifacts"]
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert files - set(arts) <= {"manifest.json", ".lock"}
    for rel in files - {"manifest.json", ".lock", "log.txt"}:  # the log grows after the last save
        assert arts[rel]["sha256"] == sha256(run / rel), rel
        assert arts[rel]["bytes"] == (run / rel).stat().st_size
    assert {"scores.json", "allocation.json", "influence.safetensors", "plots/scores.png"} <= set(arts)
    assert sum(r.startswith("factors/") for r in arts) >= 2
    assert verify_run_dir(run) == []


def truncate(path: Path, _others: list[Path]) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path, _others: list[Path]) -> None:
    """Same size, header intact: only a checksum can tell (a flipped byte in the tensor data)."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def swap(path: Path, others: list[Path]) -> None:
    """The bytes of another artifact of the same kind (a file copied from elsewhere)."""
    other = next(o for o in others if o != path and o.stat().st_size == path.stat().st_size) \
        if any(o != path and o.stat().st_size == path.stat().st_size for o in others) \
        else next(o for o in others if o != path)
    path.write_bytes(other.read_bytes())


TARGETS = {
    "factors": lambda run: sorted(run.glob("factors/**/*.safetensors")),
    "influence": lambda run: [run / "influence.safetensors"],
}


@pytest.mark.parametrize("damage", [truncate, garble, swap], ids=["truncated", "garbled", "swapped"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_damaged_cache_is_deleted_and_recomputed_with_a_warning(first, tmp_path, caplog, target, damage):
    shutil.copytree(first["run"], tmp_path / "runs" / "r")
    run = tmp_path / "runs" / "r"
    files = TARGETS[target](run)
    victim = files[len(files) // 2]
    others = files if len(files) > 1 else sorted(run.glob("factors/**/*.safetensors"))
    damage(victim, others)
    if target == "factors":  # else the cached influences are reused and the factors never read
        (run / "influence.safetensors").unlink()
    cfg = dict(first["cfg"], output_dir=str(tmp_path / "runs"))
    caplog.set_level("INFO", logger="layerif")
    out = invoke("run", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.exit_code == 0, out.output  # a warning, not an error
    assert WARNING in caplog.text and victim.name in caplog.text
    assert torch.allclose(values(run), values(first["run"]), rtol=1e-6, atol=0)
    assert half_written(run) == [] and verify_run_dir(run) == []
    assert victim.is_file()  # recomputed and recorded again
    assert "reusing influence" not in caplog.text


def test_a_damaged_manifest_starts_over_from_verified_files(first, tmp_path, caplog):
    shutil.copytree(first["run"], tmp_path / "runs" / "r")
    run = tmp_path / "runs" / "r"
    (run / "manifest.json").write_text('{"steps": {"x": ')
    cfg = dict(first["cfg"], output_dir=str(tmp_path / "runs"))
    out = invoke("run", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.exit_code == 0, out.output
    assert "is not valid JSON" in caplog.text
    assert torch.allclose(values(run), values(first["run"]), rtol=1e-6, atol=0)
    assert verify_run_dir(run) == []


def test_damaged_pruning_state_is_recomputed(first, tmp_path, caplog):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(KILLER, site / "sitecustomize.py")
    prune = {"name": "prune", "options": {"pruner": "wanda", "calibration": {"samples": 4, "seqlen": 32}}}
    scores = first["run"] / "scores.json"
    outs = {}
    for name in ("ref", "hit"):
        cfg = dict(first["cfg"], output_dir=str(tmp_path / name), application=prune)
        path = write_config(tmp_path / f"{name}.yaml", cfg)
        if name == "hit":  # killed before block 2: blocks 0 and 1 are in prune_state/
            kill = json.dumps({"track": "wanda pruning", "at": 2})
            proc = subprocess.run(cli_command("prune", str(path), "--scores", str(scores)), cwd=REPO,
                                  capture_output=True, text=True, timeout=300,
                                  env=sub_env(site, RELIABILITY_KILL=kill))
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
            state = sorted((tmp_path / name / "r" / "prune_state").glob("block_*.safetensors"))
            assert len(state) == 2
            garble(state[0], [])
        out = invoke("prune", str(path), "--scores", str(scores))
        assert out.exit_code == 0, out.output
        outs[name] = load_file(tmp_path / name / "r" / "pruned_model" / "model.safetensors")
    assert "block_0.safetensors" in caplog.text and WARNING in caplog.text
    assert outs["hit"].keys() == outs["ref"].keys()
    assert all(torch.equal(outs["hit"][k], outs["ref"][k]) for k in outs["ref"])


def test_damaged_lora_moe_checkpoint_is_recomputed(first, tmp_path, caplog):
    moe = {"name": "lora_moe", "options": {"rank": 2, "max_steps": 2, "batch_size": 4,
                                           "target_modules": ["q_proj"]}}
    cfg = dict(first["cfg"], output_dir=str(tmp_path / "runs"), application=moe,
               allocation={"name": "alphalora_experts", "options": {"total": 5}})
    path = write_config(tmp_path / "m.yaml", cfg)
    scores = str(first["run"] / "scores.json")
    assert invoke("moe", str(path), "--scores", scores).exit_code == 0
    run = tmp_path / "runs" / "r"
    adapter = load_file(run / "lora_moe/adapter/lora_moe.safetensors")
    checkpoint = run / "lora_moe" / "checkpoint.safetensors"
    assert checkpoint.is_file()
    garble(checkpoint, [])
    out = invoke("moe", str(path), "--scores", scores)
    assert out.exit_code == 0, out.output
    assert "checkpoint.safetensors" in caplog.text and WARNING in caplog.text
    again = load_file(run / "lora_moe/adapter/lora_moe.safetensors")
    assert all(torch.equal(again[k], adapter[k]) for k in adapter)
    assert verify_run_dir(run) == []


def test_hand_edited_scores_are_validated_and_their_checksum_recorded(first, tmp_path):
    edited = json.loads((first["run"] / "scores.json").read_text())
    edited["caps"]["values"] = [3.0, 1.0, 2.0]
    given = tmp_path / "edited.json"
    given.write_text(json.dumps(edited))
    cfg = dict(first["cfg"], output_dir=str(tmp_path / "runs"), application={
        "name": "prune", "options": {"pruner": "magnitude", "save_model": False}})
    out = invoke("prune", str(write_config(tmp_path / "p.yaml", cfg)), "--scores", str(given))
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "r"
    used = json.loads((run / "scores.json").read_text())["caps"]
    assert used["values"] == [3.0, 1.0, 2.0]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["scores_input"] == {"file": str(given.resolve()), "sha256": sha256(given)}
    assert manifest["artifacts"]["scores.json"]["sha256"] == sha256(run / "scores.json")
    edited["caps"]["values"] = [3.0, float("inf"), 2.0]
    given.write_text(json.dumps(edited))
    out = invoke("prune", str(write_config(tmp_path / "p.yaml", cfg)), "--scores", str(given))
    assert out.exit_code == 2 and "are not finite at layer(s) [1]" in " ".join(out.output.split())


def test_after_a_crash_only_what_the_failed_step_began_is_removed(tmp_path):
    from layerif_core.artifacts import RunDir

    run = RunDir(tmp_path / "r")
    run.write_json("finished.json", {"a": 1})
    run.record_step("first", "fp", reused=False)
    task = RunDir(tmp_path / "r" / "caps")  # a task's own run directory inside the run
    task.write_json("block.json", {"b": 2})
    (tmp_path / "r" / "caps" / "half.bin").write_bytes(b"x")  # written by hand, not finished
    (tmp_path / "r" / "stray.bin").write_bytes(b"x")
    assert run.discard_partial() == ["stray.bin"]
    assert task.discard_partial() == ["half.bin"]
    root = tmp_path / "r"
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert [p for p in left if not p.endswith((".lock", ".lock.json", "manifest.json"))] == [
        "caps/block.json", "finished.json"]
    task.close()
    run.close()
