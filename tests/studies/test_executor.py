"""`layerif study --executor local|slurm` on the tiny study (uniform vs random layer scores, 1 sparsity,
2 seeds: 4 cells): the shared stages computed once before the jobs, a job killed with SIGKILL leaves no
cell and a rerun completes the study with the inline executor's results; a Slurm submission through a
stand-in `sbatch`."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.cli import app
from layerif_core.study.executor import ExecutorOptions, run_job, submit_study

pytestmark = pytest.mark.slow


def small_study(model_dir: Path, out: Path) -> dict:
    """The tiny study's uniform arm against seeded random scores (no influence computation)."""
    data = tiny_study(model_dir, out, grid={"allocation.options.sparsity": [0.6]})
    data["arms"][1] = {"label": "random", "overrides": {"scorer.name": "random"}}
    return data


def invoke(*args: str):
    return CliRunner().invoke(app, ["--quiet", *args])


def rows(directory: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((directory / "results.csv").open()))


def worker_of(controller_pid: int, timeout_s: float = 60) -> int:
    """The pid of the process that runs a local job: the child of submitit's job controller (read
    from /proc: Linux)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended
                continue
            if int(fields[1]) == controller_pid:  # field 4 of /proc/<pid>/stat: the parent's pid
                return int(stat_file.parent.name)
        time.sleep(0.01)
    raise AssertionError(f"job controller {controller_pid} started no worker in {timeout_s} s")


@pytest.fixture(scope="module")
def inline(tiny_dir, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("inline")
    path = write_study(tmp / "s.yaml", small_study(tiny_dir, tmp / "out"))
    result = invoke("study", str(path))
    assert result.exit_code == 0, result.output
    return tmp / "out" / "tiny"


@pytest.fixture(scope="module")
def killed(tiny_dir, tmp_path_factory):  # noqa: F811
    """The study submitted to the local executor, 2 jobs at a time; the first job's worker is
    SIGKILLed as soon as it exists (seconds before it could import torch, let alone finish its cell:
    not timing-sensitive), the other jobs run to the end."""
    tmp = tmp_path_factory.mktemp("local")
    path = write_study(tmp / "s.yaml", small_study(tiny_dir, tmp / "out"))
    submission = submit_study(path, ExecutorOptions("local", array_parallelism=2))
    victim, job = next(iter(submission.jobs.items()))
    os.kill(worker_of(int(job.job_id)), signal.SIGKILL)
    outcome = submission.wait()
    directory = tmp / "out" / "tiny"
    cells = {p.stem: json.loads(p.read_text()) for p in (directory / "cells").glob("*.json")}
    return {"path": path, "dir": directory, "victim": victim, "outcome": outcome, "cells": cells,
            "scores": sorted(p.name for p in (directory / "shared" / "scores").glob("*.json")),
            "folder": submission.folder, "fingerprint": submission.fingerprint}


def test_a_killed_job_leaves_no_cell_and_the_others_finish(killed):
    outcome = killed["outcome"]
    assert outcome.lost == [killed["victim"]] and killed["victim"] not in killed["cells"]
    assert sorted(outcome.ran) == sorted(killed["cells"]) and len(outcome.ran) == 3
    assert all(c["status"] == "ok" for c in killed["cells"].values())


def test_shared_stages_are_computed_once_before_the_jobs(killed):
    # uniform's scores once (seed-free), random's once per seed; the dense evaluation once
    assert killed["outcome"].shared == {"scores": 3, "adapters": 0, "dense": 1}
    assert len(killed["scores"]) == 3
    assert killed["outcome"].jobs_shared == {"scores": 0, "adapters": 0, "dense": 0}  # the jobs: none
    assert all(c["scores"]["reused"] for c in killed["cells"].values())


def test_a_rerun_submits_the_unfinished_cell_and_reports_as_inline(killed, inline):
    result = invoke("study", str(killed["path"]), "--executor", "local", "--array-parallelism", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 cells to run as local jobs, 3 finished earlier (skipped)" in text
    assert "shared work computed before the jobs: scores 0, adapters 0, dense 0" in text
    assert "1 cells run, 3 finished earlier (skipped), 0 failed, 0 lost" in text
    assert json.loads((killed["dir"] / "cells" / f"{killed['victim']}.json").read_text())["status"] == "ok"
    assert rows(killed["dir"]) == rows(inline) and len(rows(inline)) == 4 * 2


STAND_IN_SBATCH = """#!/bin/sh
cp "$1" "{record}"
echo "Submitted batch job 4242"
"""
REFUSING_SBATCH = """#!/bin/sh
echo "sbatch: error: invalid partition specified: gpu" >&2
exit 1
"""


def stand_in_slurm(tmp_path: Path, monkeypatch, sbatch: str) -> None:
    """`sbatch` and `srun` stand-ins first on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", sbatch), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def seed_free_study(model_dir: Path, out: Path) -> dict:
    """2 arms whose scores need no data or seed (cheap shared stages) × 2 sparsities × 2 seeds."""
    return tiny_study(model_dir, out, grid={"allocation.options.sparsity": [0.3, 0.6]}, dense=False,
                      arms=[{"label": "uniform", "control": True, "overrides": {"scorer.name": "uniform"}},
                            {"label": "alpha", "overrides": {"scorer.name": "htsr_alpha"}}])


def test_slurm_array_through_a_stand_in_sbatch(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    stand_in_slurm(tmp_path, monkeypatch, STAND_IN_SBATCH.format(record=tmp_path / "script.sh"))
    path = write_study(tmp_path / "s.yaml", seed_free_study(tiny_dir, tmp_path / "out"))
    result = invoke("study", str(path), "--executor", "slurm", "--partition", "gpu", "--time", "30",
                    "--gpus-per-cell", "1", "--cpus-per-cell", "4", "--mem-gb", "16",
                    "--array-parallelism", "2", "--slurm-arg", "account=proj", "--no-wait")
    assert result.exit_code == 0, result.output
    directory = tmp_path / "out" / "tiny"
    text = " ".join(result.output.split())
    assert "shared work computed before the jobs: scores 2, adapters 0, dense 0" in text
    assert f"submitted job 4242; when they end: layerif study report {directory}" in text
    script = (tmp_path / "script.sh").read_text().splitlines()
    for line in ("#SBATCH --array=0-7%2", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --account=proj", "#SBATCH --job-name=layerif-tiny"):
        assert line in script
    logs = next(x for x in script if x.startswith("#SBATCH --output="))
    assert logs.startswith(f"#SBATCH --output={directory.resolve()}/submitit/")
    jobs = json.loads(next((directory / "submitit").glob("*/jobs.json")).read_text())
    assert sorted(jobs.values()) == [f"4242_{i}" for i in range(8)]
    assert not (directory / "cells").exists()  # nothing ran


def test_a_submission_sbatch_refuses_is_one_line(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    stand_in_slurm(tmp_path, monkeypatch, REFUSING_SBATCH)
    path = write_study(tmp_path / "s.yaml", seed_free_study(tiny_dir, tmp_path / "out"))
    result = invoke("study", str(path), "--executor", "slurm", "--partition", "gpu", "--time", "30")
    assert result.exit_code == 2, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: submitting 8 jobs failed: FailedJobError: sbatch: error: invalid partition specified: gpu")


def test_a_submitted_call_is_a_module_function_three_strings_and_a_flag(killed):
    from submitit.core.utils import DelayedSubmission

    job_id = killed["outcome"].jobs[killed["victim"]]
    call = DelayedSubmission.load(killed["folder"] / f"{job_id}_submitted.pkl")
    assert call.function is run_job and call.kwargs == {}
    assert call.args == (str(killed["dir"].resolve()), killed["fingerprint"], killed["victim"], False)
