"""The paper's study presets (examples/studies/paper/) validate and plan offline: every cell's config
is checked as a run would check it, and the plan prices every stage on an H100 from the shapes table
and the known sizes of the paper's data, with no hub and no model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from layerif_core.study.cells import build_cells
from layerif_core.study.config import load_study
from layerif_core.study.plan import plan_study

PRESETS = sorted((Path(__file__).resolve().parents[2] / "examples" / "studies" / "paper").glob("*.yaml"))
TASKS = ["mrpc", "cola", "commonsense_qa", "openbookqa", "scienceqa"]
DATA_FREE = {"uniform", "depth"}  # scorers that read no data: their score stage costs nothing


def test_there_is_a_preset_per_model_and_task_and_a_pruning_preset_per_model():
    names = {p.stem for p in PRESETS}
    expected = {f"moe_{m}_{t}" for m in ("mistral7b", "gemma7b") for t in TASKS}
    expected |= {"prune_mistral7b", "prune_gemma7b"}
    assert names == expected


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_cell_validates_offline(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study, base = load_study(path)
    cells = build_cells(study, base)
    arms = {a.label for a in study.arms}
    assert len(cells) == len(arms) * len(study.points()) * len(study.seeds)
    assert len(study.seeds) >= 3
    for cell in cells:
        assert cell.config.model.dtype == "bfloat16"


@pytest.mark.parametrize("path", [p for p in PRESETS if p.stem.startswith("moe_")], ids=lambda p: p.stem)
def test_moe_arms_place_160_experts_over_every_layer(path):
    layers = 32 if "mistral" in path.stem else 28
    study, base = load_study(path)
    for cell in build_cells(study, base):
        alloc = cell.config.allocation
        if alloc.name == "given_experts":
            values = alloc.options["values"]
            assert len(values) == layers and sum(values) == 160, cell.arm
        else:
            assert alloc.options["total"] == 160, cell.arm
        if cell.config.scorer.name == "layerif":  # as the authors score: their padding, bf16, DataInf
            cfg = cell.config
            assert cfg.scorer.loss.padding == "authors" and cfg.scorer.estimator.name == "datainf"
            assert (cfg.tasks[0].train.split, cfg.tasks[0].validation.split) == ("train", "validation")
            assert cfg.layers.modules == "attention"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_the_plan_prices_every_stage_on_an_h100(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_study(path, "H100")
    assert not any("states no cost" in n or "size unknown" in n for n in plan.notes()), plan.notes()
    for stage in plan.stages:
        assert math.isfinite(stage.seconds) and stage.seconds >= 0, stage.label
        if not (stage.kind == "scores" and stage.label in DATA_FREE):
            assert stage.seconds > 0, stage.label
        assert stage.cost.peak_bytes <= plan.device.memory_bytes, stage.label
    assert math.isfinite(plan.seconds) and plan.seconds > 0


def test_wikitext2_from_the_hub_is_sized_from_the_bundled_copy_of_the_same_text():
    from layerif_core.config import DataSpec
    from layerif_core.estimates import split_size
    from layerif_core.tasks import corpus_text

    windows = int(len(corpus_text("wikitext2", "test")) / 4.0 / 2048)  # 4 characters a token
    spec = DataSpec(source="Salesforce/wikitext", config_name="wikitext-2-raw-v1", split="test",
                    pack=True, max_length=2048)
    assert split_size(spec) == (windows, 2048, "")


@pytest.mark.slow
def test_a_moe_preset_runs_with_only_its_model_and_data_swapped_for_local_ones(tmp_path):
    """The CoLA preset's uniform and LayerIF +VE arms, one seed, on a tiny random model and a
    hand-written CoLA split in the hub's schema: the preset's scoring, templated training and the
    authors' evaluation run as configured, cut to one optimizer step and two test questions."""
    import datasets
    import yaml
    from typer.testing import CliRunner

    from layerif_core.cli import app
    from layerif_core.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", max_position_embeddings=1024)
    rows = [{"sentence": f"The cat number {k} sat.", "label": k % 2, "idx": k} for k in range(300)]
    cola = str(tmp_path / "cola.parquet")
    datasets.Dataset.from_list(rows).to_parquet(cola)
    data = yaml.safe_load((PRESETS[0].parent / "moe_mistral7b_cola.yaml").read_text())
    data["output_dir"] = str(tmp_path / "studies")
    data["seeds"] = [0]
    data["dense"] = False
    data["arms"] = [a for a in data["arms"] if a["label"] in ("uniform", "LayerIF +VE")]
    base = data["base"]
    base["model"] = {"source": str(model), "dtype": "float32", "device": "cpu"}
    for spec in (base["tasks"][0]["train"], base["tasks"][0]["validation"]):
        spec["data_files"] = cola
    opts = base["application"]["options"]
    for spec in (opts["train"], opts["validation"]):
        spec["data_files"] = cola
    opts.update(max_steps=1, batch_size=2, grad_accum=1, precision="fp32")
    base["evaluation"][0]["options"].update(data_files=cola, limit=2, max_new_tokens=4)
    path = tmp_path / "cola.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["--quiet", "study", str(path)])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "studies" / "paper_moe_mistral7b_cola" / "results.csv").read_text()
    assert rows.count("paper/cola/accuracy_pct") == 2  # one per arm
