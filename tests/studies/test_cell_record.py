"""The typed cell record: cell files written before it existed read back and write back unchanged,
records restored with their metrics only read with defaults, keys it does not know are kept, and a
file that is no cell record is one line naming the fix."""

from __future__ import annotations

import json

import pytest

from layerif_core.study.config import StudyError
from layerif_core.study.records import CellRecord
from layerif_core.study.runner import cell_result

# cells/uniform-0.6-s0.json as the runner wrote it before the record was typed (key order as written)
OLD_OK = """{
  "id": "uniform-0.6-s0",
  "arm": "uniform",
  "grid": {"allocation.options.sparsity": 0.6},
  "seed": 0,
  "control": true,
  "scores": {"values": [1.0, 1.0], "higher_is_better": false, "scorer": "uniform", "reused": true,
             "details": {}},
  "allocation": {"kind": "sparsity", "allocator": "uniform_sparsity", "values": [0.6, 0.6]},
  "curves": {},
  "metrics": {"sparsity/achieved": 0.5999, "perplexity/capitals": 231.5},
  "timings": {"scores": 0.001, "application": 0.52, "evaluation": 0.31},
  "status": "ok",
  "seconds": 0.9,
  "versions": {"layerif": "0.1.0", "torch": "2.5.1", "cpu": "AMD EPYC 7B13", "cpu_capability": "AVX2"},
  "finished": "2026-11-30T10:00:00+00:00"
}"""
OLD_FAILED = """{
  "id": "LayerIF_ALL-0.6-s1", "arm": "LayerIF ALL", "grid": {"allocation.options.sparsity": 0.6},
  "seed": 1, "control": false, "status": "failed",
  "error": {"type": "ConfigError", "message": "owl_sparsity: out of range\\nmore", "user_error": true,
            "traceback": "Traceback (most recent call last): ..."},
  "seconds": 0.2, "versions": {"layerif": "0.1.0"}, "finished": "2026-11-30T10:00:01+00:00"
}"""


def test_an_old_finished_cell_reads_typed_and_writes_back_unchanged():
    data = json.loads(OLD_OK)
    record = CellRecord.from_json(data)
    assert record.ok and record.control and record.seed == 0
    assert record.metrics == {"sparsity/achieved": 0.5999, "perplexity/capitals": 231.5}
    assert record.scores.values == [1.0, 1.0] and record.scores.reused and not record.scores.higher_is_better
    assert record.allocation.kind == "sparsity" and record.allocation.values == [0.6, 0.6]
    assert record.timings["application"] == 0.52 and record.versions["cpu"] == "AMD EPYC 7B13"
    assert record.to_json() == data
    assert list(record.to_json()) == list(data)  # the same key order as the runner wrote


def test_an_old_failed_cell_reads_its_error():
    data = json.loads(OLD_FAILED)
    record = CellRecord.from_json(data)
    assert not record.ok and record.error.type == "ConfigError" and record.error.user_error
    assert record.error.first_line == "owl_sparsity: out of range"
    assert record.metrics == {} and record.scores is None and record.allocation is None
    assert record.to_json() == data


def test_a_record_restored_with_its_metrics_only_reads_with_defaults():
    restored = {"id": "u-s0", "arm": "u", "grid": {}, "seed": 0, "status": "ok", "metrics": {"acc": 0.5}}
    record = CellRecord.from_json(restored)
    assert record.ok and not record.control and record.metrics == {"acc": 0.5}
    assert (record.scores, record.allocation, record.curves, record.error, record.seconds) == (None,) * 5
    assert (record.timings, record.versions) == ({}, {})
    assert record.to_json() == {**restored, "control": False}
    # no status at all: finished when it has metrics and no error, failed otherwise
    assert CellRecord.from_json({k: v for k, v in restored.items() if k != "status"}).ok
    assert not CellRecord.from_json({"id": "u-s1", "arm": "u", "grid": {}, "seed": 1}).ok


def test_keys_the_record_does_not_know_are_kept():
    data = json.loads(OLD_OK) | {"note": "rerun on the Xeon", "application_metrics": {"x": 1}}
    assert CellRecord.from_json(data).to_json() == data


def test_a_cell_result_is_finished_work_added_to_the_record():
    start = CellRecord("a-s0", "a", {"x": 1}, 0)
    done = start.with_result({"metrics": {"acc": 1}, "timings": {"scores": 0.5},
                              "curves": {"loss": [(0, 2)]}})
    assert done.ok and done.metrics == {"acc": 1.0} and done.curves == {"loss": [[0.0, 2.0]]}
    assert not start.ok  # a new record is not finished


def test_a_file_that_is_no_cell_record_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(StudyError) as info:
        CellRecord.from_json({"id": "x", "grid": {}, "seed": 0})
    assert "has no 'arm'" in str(info.value) and "rerun the study" in str(info.value)
    assert "\n" not in str(info.value)
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "x.json").write_text('{"id": "x"}')
    assert cell_result(tmp_path, "x") is None  # the runner reruns such a cell
    (tmp_path / "cells" / "uniform-0.6-s0.json").write_text(OLD_OK)
    assert cell_result(tmp_path, "uniform-0.6-s0") == CellRecord.from_json(json.loads(OLD_OK))
