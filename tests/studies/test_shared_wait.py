"""Two processes of one study (shards, or runs of different ``--arm``s) that need the same shared
stage: the second waits for the first's result instead of failing on the run directory's lock, and
computes the stage itself when the first ended without one."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from study_helpers import PPL, tiny_dir, tiny_study  # noqa: F401 (tiny_dir: fixture)

from layerif_core.config import RunConfig
from layerif_core.runlock import LOCK, acquire_lock, release_lock
from layerif_core.study.runner import Shared

# holds the lock of a shared stage's run directory, says so, then writes (or not) the stage's result
HOLDER = """
import json, sys, time
from pathlib import Path
from layerif_core.runlock import acquire_lock
run, result, ready = (Path(a) for a in sys.argv[1:4])
write, metric = sys.argv[4] == "1", sys.argv[5]
run.mkdir(parents=True, exist_ok=True)
acquire_lock(run)
ready.write_text("held")
time.sleep(1.5)
if write:
    result.write_text(json.dumps({"metrics": {metric: 123.0}, "seconds": 0.0, "model": "other"}))
"""


def start(script: str, ready, *args: str) -> subprocess.Popen:
    """Run ``script`` in a process of its own; return once it says it holds its lock (``ready``)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args])
    deadline = time.monotonic() + 60
    while not ready.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc


def hold(shared: Shared, cfg: RunConfig, tmp_path, write: bool) -> subprocess.Popen:
    path = shared.dense_path(cfg)
    ready = tmp_path / "ready"
    return start(HOLDER, ready, str(path.with_suffix("")), str(path), str(ready), "1" if write else "0", PPL)


@pytest.mark.parametrize("holder_writes", [True, False])
def test_a_shared_stage_under_way_in_another_process_is_waited_for(tiny_dir, tmp_path,  # noqa: F811
                                                                   holder_writes):
    cfg = RunConfig.model_validate(tiny_study(tiny_dir, tmp_path / "out")["base"])
    shared = Shared(tmp_path / "study")
    proc = hold(shared, cfg, tmp_path, holder_writes)
    stages: list[str] = []
    result = shared.dense(cfg, stages.append)
    assert proc.wait(timeout=60) == 0
    assert "dense evaluation: waiting for another process" in stages
    if holder_writes:  # its result, read back: the stage is not computed twice
        assert result["metrics"] == {PPL: 123.0}
        assert shared.computed["dense"] == 0
    else:  # it ended without one: this process computes it
        assert result["metrics"][PPL] > 1 and result["metrics"][PPL] != 123.0
        assert shared.computed["dense"] == 1
        assert json.loads(shared.dense_path(cfg).read_text())["metrics"] == result["metrics"]


# computes the dense evaluation as a study process does, says so, then stays alive until told to end
COMPUTER = """
import sys, time
from pathlib import Path
from layerif_core.config import RunConfig
from layerif_core.study.runner import Shared
study, config, ready, end = (Path(a) for a in sys.argv[1:5])
Shared(study).dense(RunConfig.model_validate_json(config.read_text()), lambda stage: None)
ready.write_text("computed")
deadline = time.monotonic() + 60
while not end.is_file() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_shared_stage_frees_its_run_directory_once_its_result_is_written(tiny_dir, tmp_path):  # noqa: F811
    # a waiting process goes on when the result is there, not when the computing process (a whole cell) ends
    cfg = RunConfig.model_validate(tiny_study(tiny_dir, tmp_path / "out")["base"])
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    ready, end = tmp_path / "ready", tmp_path / "end"
    proc = start(COMPUTER, ready, str(tmp_path / "study"), str(tmp_path / "cfg.json"), str(ready), str(end))
    try:
        shared = Shared(tmp_path / "study")
        run = shared.dense_path(cfg).with_suffix("")
        acquire_lock(run)  # the computing process is alive, and no longer holds it
        release_lock(run / LOCK)
        assert shared.dense(cfg, lambda stage: None)["metrics"][PPL] > 1
        assert shared.computed["dense"] == 0
    finally:
        end.write_text("end")
        assert proc.wait(timeout=60) == 0


# holds the scoring adapter's directory lock, says so, then trains the adapter itself (or not)
ADAPTER_HOLDER = """
import sys, time
from pathlib import Path
from layerif_core.config import RunConfig
from layerif_core.runlock import acquire_lock
from layerif_core.study.runner import Shared
study, config, ready = (Path(a) for a in sys.argv[1:4])
cfg = RunConfig.model_validate_json(config.read_text())
shared = Shared(study)
out = shared.adapter_path(cfg)
out.mkdir(parents=True, exist_ok=True)
acquire_lock(out)
ready.write_text("held")
time.sleep(1.5)
if sys.argv[4] == "1":
    shared.adapter(cfg, lambda stage: None)
"""


@pytest.mark.parametrize("holder_trains", [True, False])
def test_a_scoring_adapter_under_training_in_another_process_is_waited_for(tiny_dir, tmp_path,  # noqa: F811
                                                                           holder_trains):
    base = tiny_study(tiny_dir, tmp_path / "out")["base"]
    base["layers"] = {**base.get("layers", {}), "lora_only": True}
    base["finetune"] = {"rank": 2, "alpha": 4, "epochs": 1, "batch_size": 3,
                        "target_modules": ["q_proj", "v_proj"]}
    cfg = RunConfig.model_validate(base)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    ready = tmp_path / "ready"
    proc = start(ADAPTER_HOLDER, ready, str(tmp_path / "study"), str(tmp_path / "cfg.json"), str(ready),
                 "1" if holder_trains else "0")
    shared = Shared(tmp_path / "study")
    stages: list[str] = []
    scored = shared.adapter(cfg, stages.append)
    assert proc.wait(timeout=120) == 0
    assert "fine-tuning the scoring adapter: waiting for another process" in stages
    assert (shared.adapter_path(cfg) / "adapter_model.safetensors").is_file()
    assert scored.model.adapter == str(shared.adapter_path(cfg))
    # the holder's adapter is reused, not trained twice; a holder that ended without one leaves it to us
    assert shared.computed["adapters"] == (0 if holder_trains else 1)
