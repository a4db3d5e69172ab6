"""Which layer scores a study computes once for every seed: those that cannot change with it, as
each scorer and estimator declares through the registry (``seeded=``), third-party ones alike."""

from __future__ import annotations

import json

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core import registry as registry_module
from layerif_core.cli import app
from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.errors import PluginError
from layerif_core.registry import load_registry
from layerif_core.study.runner import Shared, run_study

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


@pytest.mark.parametrize(("kind", "name", "options", "uses_seed"), [
    ("estimator", "ekfac", {}, True),                      # true Fisher: labels drawn by seed
    ("estimator", "kfac", {"fisher": "empirical"}, False),
    ("estimator", "exact", {"fisher": "empirical"}, False),
    ("estimator", "lissa", {"fisher": "empirical"}, True),  # samples its batches
    ("estimator", "datainf", {}, False),
    ("estimator", "grad_cosine", {}, False),
    ("scorer", "uniform", {}, False),
    ("scorer", "depth", {}, False),
    ("scorer", "htsr_alpha", {}, False),
    ("scorer", "random", {}, True),
    ("scorer", "random", {"seed": 3}, False),               # its own seed fixes the scores
    ("scorer", "gradient_norm", {}, True),                  # declares nothing: seeded
])
def test_components_declare_whether_their_result_uses_the_seed(kind, name, options, uses_seed):
    reg = load_registry(entry_points=False)
    assert reg.uses_seed(kind, ComponentSpec(name=name, options=options)) is uses_seed


def test_a_seed_declaration_that_asks_for_an_unknown_argument_or_is_no_answer_is_refused():
    reg = load_registry(entry_points=False)
    reg.add("scorer", "asks_seed", "collections:OrderedDict", seeded=lambda seed: False)
    with pytest.raises(PluginError, match=r"asks for \['seed'\]; it may take options, spec, config"):
        reg.uses_seed("scorer", ComponentSpec(name="asks_seed"))
    with pytest.raises(PluginError, match="seeded must be True, False or a callable"):
        reg.add("scorer", "answers_none", "collections:OrderedDict", seeded=None)


CONSTANT = """
import torch
from layerif_core import hookimpl
from layerif_core.results import LayerScores

CALLS = []


class Ramp:
    def __init__(self, name):
        self.name = name

    def score(self, ctx, task):
        CALLS.append((self.name, ctx.seed))
        return LayerScores(torch.arange(len(ctx.layer_map), dtype=torch.float32), False, self.name)


@hookimpl
def layerif_register_scorers(register):
    register("ramp", lambda: Ramp("ramp"), seeded=False, help="The layer index, whatever the seed.")
    register("ramp_undeclared", lambda: Ramp("ramp_undeclared"))
"""


@pytest.mark.slow
def test_a_third_party_scorer_declared_seed_free_is_shared_across_seeds(tiny_dir, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    info = tmp_path / "lif_ramp-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lif-ramp\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[layerif]\nlif_ramp = lif_ramp\n")
    (tmp_path / "lif_ramp.py").write_text(CONSTANT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_REGISTRY", load_registry())
    import lif_ramp

    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.5]}, arms=[
        {"label": "declared", "control": True, "overrides": {"scorer.name": "ramp"}},
        {"label": "undeclared", "overrides": {"scorer.name": "ramp_undeclared"}}])
    data["base"]["application"]["options"]["pruner"] = "magnitude"
    outcome = run_study(write_study(tmp_path / "s.yaml", data), show_progress=False)
    assert not outcome.failed
    assert sorted(lif_ramp.CALLS) == [("ramp", 0), ("ramp_undeclared", 0), ("ramp_undeclared", 1)]
    assert outcome.shared["scores"] == 3
