"""Two runs, one directory: a live writer's lock refuses a second run (naming the process, host and
start time); a dead writer's lock (an OS lock, freed when its process dies) is taken over with a
warning. Runs in different directories on the same inputs both finish with equal results and no
half-written file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _harness import REPO, base_config, cli_command, half_written, invoke, save_tiny, sub_env, write_config

from layerif_core.artifacts import RunDir
from layerif_core.errors import ArtifactError

KILLER = Path(__file__).with_name("_killer.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("conc") / "tiny")


def test_a_live_writer_refuses_a_second_run_and_its_dead_lock_is_taken_over(model_dir, tmp_path, caplog):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(KILLER, site / "sitecustomize.py")
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path / "runs", model_dir))
    run = tmp_path / "runs" / "r"
    stop = {"track": "^eigenvalue correction", "at": 1, "signal": "SIGSTOP"}  # alive, mid-pass
    proc = subprocess.Popen(cli_command("run", str(config)), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=sub_env(site, RELIABILITY_KILL=json.dumps(stop)))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until it stopped itself in the correction pass
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "T" or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None and state == "T"
        lock = json.loads((run / ".lock.json").read_text())
        assert lock["pid"] == proc.pid and lock["host"] == socket.gethostname()
        out = invoke("run", str(config))
        assert out.exit_code == 2
        line = " ".join(out.output.split())
        assert (f"run directory '{run}' is in use by process {proc.pid} on {socket.gethostname()}"
                in line and "wait for it to finish, or choose another name (--set name=...)" in line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    caplog.set_level("WARNING", logger="layerif")
    out = invoke("run", str(config))
    assert out.exit_code == 0, out.output
    assert f"its lock belongs to process {proc.pid}, which is no longer running" in caplog.text
    assert half_written(run) == []
    assert json.loads((run / "manifest.json").read_text())["steps"]  # the run finished there


HOLDER_SCRIPT = """
import sys
from layerif_core.artifacts import RunDir
RunDir(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # hold the lock until killed
"""


def test_a_killed_holder_process_frees_the_lock(tmp_path, caplog):
    """A real process takes the lock: while it lives a second opening is refused with its host, pid
    and start time; once it is killed (SIGKILL: no exit handler runs) the lock is free and its
    leftover record is taken over with a warning."""
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(run)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=sub_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        record = json.loads((run / ".lock.json").read_text())
        with pytest.raises(ArtifactError) as err:
            RunDir(run)
        assert str(err.value) == (
            f"run directory '{run}' is in use by process {proc.pid} on {socket.gethostname()} (since "
            f"{record['since']}: -c {run}); wait for it to finish, or choose another name (--set name=...).")
    finally:
        proc.kill()
        proc.wait()
    assert (run / ".lock.json").exists()  # killed: its record is left behind
    caplog.set_level("WARNING", logger="layerif")
    RunDir(run).close()
    assert f"its lock belongs to process {proc.pid}, which is no longer running" in caplog.text


def test_the_lock_is_reentrant_in_one_process_and_released_on_close(tmp_path):
    first = RunDir(tmp_path / "r")
    second = RunDir(tmp_path / "r")  # the same process may reopen its own run (the Python API does)
    assert json.loads((tmp_path / "r" / ".lock.json").read_text())["pid"] == os.getpid()
    second.close()
    assert not (tmp_path / "r" / ".lock.json").exists()
    probe = subprocess.run([sys.executable, "-c", "import sys; from layerif_core.artifacts import RunDir; "
                            "RunDir(sys.argv[1]).close()", str(tmp_path / "r")], cwd=REPO, env=sub_env(),
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]  # another process can take it now
    first.close()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock.json").write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(ArtifactError, match=r"locked by process 1 on host elsewhere.example; if that "
                                            r"run is over, delete '.*\.lock\.json'"):
        RunDir(tmp_path / "r")
    (tmp_path / "r" / ".lock.json").unlink()  # the fix the message names
    RunDir(tmp_path / "r").close()


def test_a_garbled_lock_record_counts_as_stale(tmp_path, caplog):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock.json").write_text('{"pid": 12')  # edited, or an older version's partial write
    RunDir(tmp_path / "r").close()
    assert "taking over run directory" in caplog.text


def test_two_directories_on_the_same_inputs_in_parallel(model_dir, tmp_path):
    configs = [write_config(tmp_path / f"c{i}.yaml", base_config(tmp_path / "runs", model_dir, name=f"r{i}"))
               for i in range(2)]
    procs = [subprocess.Popen(cli_command("run", str(c)), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=sub_env()) for c in configs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = [tmp_path / "runs" / f"r{i}" for i in range(2)]
    scores = [json.loads((r / "scores.json").read_text()) for r in runs]
    assert scores[0]["caps"]["values"] == scores[1]["caps"]["values"]
    for r in runs:
        assert half_written(r) == [] and not (r / ".lock.json").exists()
