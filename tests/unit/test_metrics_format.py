"""metrics.json: one format (2) whoever wrote it; the two shapes earlier versions wrote still read,
and a format this version does not know is refused with what to do."""

from __future__ import annotations

import json

import pytest

from layerif_core.errors import DataError
from layerif_core.evaluation import read_metrics


def write(tmp_path, data) -> object:
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    return tmp_path


def test_format_2_reads_with_its_task_application_and_curves(tmp_path):
    data = {"format": 2, "model": {"source": "m", "fingerprint": "f"}, "task": "caps",
            "application": {"name": "lora_moe", "provider": "layerif-lora-moe", "version": "1",
                            "seconds": 1.0},
            "metrics": {"lora_moe/validation_loss": 1.5, "perplexity/x": 9.0},
            "curves": {"lora_moe/validation_loss": [[0, 2.0], [4, 1.5]]}, "evaluators": []}
    report = read_metrics(write(tmp_path, data))
    assert report.to_json() == data
    assert report.path == tmp_path / "metrics.json"


def test_the_earlier_evaluation_shape_reads(tmp_path):
    data = {"model": {"source": "m", "fingerprint": "f"}, "metrics": {"perplexity/x": 9.0},
            "evaluators": [{"name": "perplexity", "provider": "layerif-eval", "version": "1",
                            "seconds": 0.5}]}
    report = read_metrics(write(tmp_path, data) / "metrics.json")
    assert (report.model, report.metrics, report.evaluators) == (data["model"], data["metrics"],
                                                                 data["evaluators"])
    assert report.task is None and report.application is None


def test_the_earlier_flat_shape_of_prune_and_moe_reads(tmp_path):
    report = read_metrics(write(tmp_path, {"sparsity/achieved": 0.5, "perplexity/x": 21}))
    assert report.metrics == {"sparsity/achieved": 0.5, "perplexity/x": 21.0}


def test_an_unknown_format_names_its_version_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"metrics format 3, this layerif reads formats 1 and 2; read it "
                                        r"with the layerif version that wrote it"):
        read_metrics(write(tmp_path, {"format": 3, "metrics": {}}))
    with pytest.raises(DataError, match="not a layerif metrics.json"):
        read_metrics(write(tmp_path, {"scores": [1, 2]}))
