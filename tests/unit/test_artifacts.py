"""Run directory: atomic writes, resume by fingerprint, --force, manifest, unwritable paths."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import char_tokenizer, make_config, make_ctx, tiny_model
from layerif_core.artifacts import RunDir
from layerif_core.errors import ArtifactError, NumericalError
from layerif_core.pipeline import compute_layer_scores, open_run


def test_scores_influence_plot_and_manifest_are_written(tmp_path):
    ctx = make_ctx(tmp_path)
    scores = compute_layer_scores(ctx)
    d = ctx.run_dir.path
    on_disk = json.loads((d / "scores.json").read_text())
    assert on_disk["arith"]["values"] == pytest.approx(scores["arith"].values.tolist())
    assert on_disk["arith"]["higher_is_better"] is False
    infl, meta = ctx.run_dir.read_tensors("influence.safetensors")
    assert infl["arith"].shape == (3, 6) and "fingerprint:arith" in meta
    assert (d / "plots" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((d / "manifest.json").read_text())
    assert {"config", "versions", "model", "data", "steps", "seed", "timings"} <= set(manifest)
    assert manifest["data"]["arith"]["arith/train"]["examples"] == 6
    assert not list(d.rglob("*.tmp"))


def test_rerun_reuses_and_force_recomputes(tmp_path):
    model = tiny_model()
    first = compute_layer_scores(make_ctx(tmp_path, model=model))
    ctx = make_ctx(tmp_path, model=model)
    again = compute_layer_scores(ctx)
    assert ctx.run_dir.manifest["steps"]["influence.safetensors:arith"]["reused"] is True
    torch.testing.assert_close(first["arith"].values, again["arith"].values)
    forced = open_run(make_config(tmp_path), force=True, show_progress=False, model=model,
                      tokenizer=char_tokenizer())
    compute_layer_scores(forced)
    assert forced.run_dir.manifest["steps"]["influence.safetensors:arith"]["reused"] is False


def test_changed_inputs_are_recomputed(tmp_path):
    model = tiny_model()
    compute_layer_scores(make_ctx(tmp_path, model=model))
    cfg = make_config(tmp_path).model_dump()
    cfg["tasks"][0]["validation"]["limit"] = 2
    ctx = make_ctx(tmp_path, model=model, tasks=cfg["tasks"])
    compute_layer_scores(ctx)
    assert ctx.run_dir.manifest["steps"]["influence.safetensors:arith"]["reused"] is False


def test_nan_loss_names_the_example_and_writes_no_scores(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"question": "ab", "answer": "cd"}] * 2 + [{"question": "a#", "answer": "cd"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model()
    with torch.no_grad():
        model.get_input_embeddings().weight[2] = float("nan")  # '#' is <unk> (id 2)
    spec = {"source": str(data), "prompt": "{question}", "completion": "{answer}"}
    ctx = make_ctx(tmp_path, model=model, tasks=[{"name": "t", "train": spec, "validation": spec}])
    with pytest.raises(NumericalError, match="loss of example 2 of 't/train' is nan"):
        compute_layer_scores(ctx)
    assert not (ctx.run_dir.path / "scores.json").exists()


def test_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write"):
        RunDir(blocker / "run")


def test_corrupt_artifact_is_deleted_not_unpickled(tmp_path, caplog):
    rd = RunDir(tmp_path / "r")
    (rd.path / "influence.safetensors").write_bytes(b"not a safetensors file")
    assert rd.read_tensors("influence.safetensors") is None  # a cache: recomputed, never trusted
    assert "not a readable safetensors file" in caplog.text
    assert not (rd.path / "influence.safetensors").exists()
