"""Which layer scores a study computes once for every seed: those that cannot change with it."""

from __future__ import annotations

import json

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.config import RunConfig
from layerif_core.study.runner import Shared

TEXT = {"source": "texts.jsonl", "text": "{text}"}
GENERATED = {"source": "bundled:capitals"}


def config(estimator: dict, data: dict = TEXT, **fields) -> RunConfig:
    return RunConfig.model_validate({
        "tasks": [{"name": "t", "train": data, "validation": data}],
        "scorer": {"name": "layerif", "estimator": estimator}, **fields})


@pytest.mark.parametrize(("cfg", "uses_seed"), [
    (config({"name": "datainf"}), False),
    (config({"name": "grad_dot"}), False),
    (config({"name": "ekfac", "options": {"fisher": "empirical"}}), False),
    (config({"name": "ekfac"}), True),                       # true Fisher: labels drawn by seed
    (config({"name": "lissa", "options": {"fisher": "empirical"}}), True),  # samples its batches
    (config({"name": "datainf"}, GENERATED), True),          # the bundled task is drawn by seed
    (config({"name": "datainf"}, layers={"lora_only": True}), True),  # adapter trained with the seed
    (config({"name": "datainf"}, layers={"lora_only": True}, finetune={"seed": 0}), False),
    (config({"name": "datainf"}, layers={"lora_only": True}, model={"adapter": "a"}), False),
    (RunConfig.model_validate({"tasks": [{"name": "t", "train": TEXT, "validation": TEXT}],
                               "scorer": {"name": "random"}}), True),
])
def test_scores_use_the_seed_only_where_they_can_change_with_it(tmp_path, cfg, uses_seed):
    assert Shared(tmp_path).scores_use_seed(cfg) is uses_seed
    other = cfg.model_copy(update={"seed": 7})
    same_key = Shared(tmp_path).scores_path(cfg) == Shared(tmp_path).scores_path(other)
    assert same_key is not uses_seed


@pytest.mark.slow
def test_deterministic_scores_are_computed_once_for_all_seeds(tiny_dir, tmp_path):  # noqa: F811
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"The capital of country {i} is city {i}."}) + "\n"
                             for i in range(6)))
    data = tiny_study(tiny_dir, tmp_path / "out")
    for split in ("train", "validation"):
        data["base"]["tasks"][0][split] = {"source": str(texts), "text": "{text}", "max_length": 96}
    result = CliRunner().invoke(app, ["--quiet", "study", str(write_study(tmp_path / "s.yaml", data))])
    assert result.exit_code == 0, result.output
    # uniform once, grad_dot on fixed text once: 8 cells over 2 seeds
    assert "shared work computed: scores 2, adapters 0, dense 1" in " ".join(result.output.split())
