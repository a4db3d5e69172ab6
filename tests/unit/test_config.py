"""Typed configs: defaults run, unknown keys are rejected with the closest name, overrides apply."""

from __future__ import annotations

import json

import pytest

from layerif_core.config import RunConfig, config_schema, load_config
from layerif_core.errors import ConfigError

TASK = {"name": "a", "train": {"source": "bundled:arithmetic"},
        "validation": {"source": "bundled:arithmetic", "split": "validation"}}


def test_minimal_config_gets_documented_defaults():
    cfg = load_config(data={"tasks": [TASK]})
    assert cfg.model.source == "embedded:smollm2-135m"
    assert cfg.model.trust_remote_code is False
    assert cfg.scorer.aggregator.name == "helpful_sum"


def test_unknown_key_suggests_closest_name():
    with pytest.raises(ConfigError, match=r"unknown key 'model.sorce'.*did you mean 'source'"):
        load_config(data={"tasks": [TASK], "model": {"sorce": "x"}})


def test_unknown_nested_key_in_list():
    bad = dict(TASK, train={"source": "bundled:arithmetic", "limt": 3})
    with pytest.raises(ConfigError, match=r"tasks.0.train.limt.*did you mean 'limit'"):
        load_config(data={"tasks": [bad]})


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="'batch_size'"):
        load_config(data={"tasks": [TASK], "batch_size": 0})


def test_overrides_parse_values_and_index_lists():
    cfg = load_config(data={"tasks": [TASK]},
                      overrides=["tasks.0.train.limit=7", "model.dtype=float32", "seed=3"])
    assert cfg.tasks[0].train.limit == 7 and cfg.model.dtype == "float32" and cfg.seed == 3


def test_override_of_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(data={"tasks": [TASK]}, overrides=["batchsize=2"])


def test_yaml_and_toml_files_give_the_same_config(tmp_path):
    import yaml

    data = {"name": "x", "tasks": [TASK]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    toml = ('name = "x"\n[[tasks]]\nname = "a"\n[tasks.train]\nsource = "bundled:arithmetic"\n'
            '[tasks.validation]\nsource = "bundled:arithmetic"\nsplit = "validation"\n')
    (tmp_path / "c.toml").write_text(toml)
    assert load_config(tmp_path / "c.yaml").model_dump() == load_config(tmp_path / "c.toml").model_dump()


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(tmp_path / "bad.yaml")


def test_schema_documents_every_field():
    schema = config_schema()
    json.dumps(schema)

    def walk(props):
        for name, prop in props.items():
            assert prop.get("description"), f"field {name} has no description"

    walk(schema["properties"])
    for definition in schema["$defs"].values():
        walk(definition.get("properties", {}))
    assert RunConfig.model_fields["tasks"].is_required()


def test_duplicate_task_names_rejected():
    with pytest.raises(ConfigError, match="unique"):
        load_config(data={"tasks": [TASK, TASK]})


def test_scorer_loss_padding_is_none_by_default_and_authors_on_request():
    assert load_config(data={"tasks": [TASK]}).scorer.loss.padding == "none"
    cfg = load_config(data={"tasks": [TASK]}, overrides=["scorer.loss.padding=authors"])
    assert cfg.scorer.loss.padding == "authors"
    with pytest.raises(ConfigError, match=r"scorer.loss.padding.*'none' or 'authors'"):
        load_config(data={"tasks": [TASK]}, overrides=["scorer.loss.padding=longest"])


def test_the_authors_padding_preset_is_the_paper_route_with_the_padding():
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    route = load_config(examples / "paper_route.yaml")
    padded = load_config(examples / "paper_route_authors_padding.yaml")
    assert padded.scorer.loss.padding == "authors" and route.scorer.loss.padding == "none"
    same = padded.model_copy(update={"name": route.name, "scorer": padded.scorer.model_copy(
        update={"loss": route.scorer.loss})})
    assert same == route


def test_the_default_padding_is_left_out_of_config_dumps():
    # scores cached under a dump of the scorer config before the option existed keep their keys
    cfg = load_config(data={"tasks": [TASK], "scorer": {"loss": {"tokens": "all"}}})
    assert cfg.model_dump(mode="json")["scorer"]["loss"] == {"tokens": "all", "reduction": "sum"}
    padded = load_config(data={"tasks": [TASK], "scorer": {"loss": {"padding": "authors"}}})
    assert padded.model_dump(mode="json")["scorer"]["loss"]["padding"] == "authors"
    assert load_config(data=padded.model_dump(mode="json")) == padded
