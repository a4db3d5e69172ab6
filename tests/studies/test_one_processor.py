"""One processor per study: a run refuses to add cells on another processor, a report refuses cells
of several, ``--allow-mixed-hardware`` allows both, and the summary names the one processor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import tiny_dir, tiny_study, write_study  # noqa: F401 (tiny_dir: fixture)
from typer.testing import CliRunner

from layerif_core.artifacts import package_versions
from layerif_core.cli import app
from layerif_core.study.config import StudyError
from layerif_core.study.hardware import check_run, processor


def invoke(*args: str):
    return CliRunner().invoke(app, ["--quiet", "study", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def this_cpu() -> str:
    here = package_versions()
    return f"{here['cpu']} ({here['cpu_capability']})"


@pytest.fixture
def finished(tiny_dir, tmp_path):  # noqa: F811
    """A tiny study of two cells (uniform and LayerIF ALL at 30%, seed 0), run on this CPU."""
    data = tiny_study(tiny_dir, tmp_path / "out", grid={"allocation.options.sparsity": [0.3]},
                      seeds=[0])
    data["base"]["model"]["device"] = "cpu"
    path = write_study(tmp_path / "s.yaml", data)
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    directory = tmp_path / "out" / "tiny"
    cells = sorted((directory / "cells").glob("*.json"))
    assert len(cells) == 2
    return path, directory, cells


def move_to_other_cpu(cell: Path) -> None:
    record = json.loads(cell.read_text())
    record["versions"] |= {"cpu": "Other CPU", "cpu_capability": "DEFAULT", "device": "cpu"}
    cell.write_text(json.dumps(record))


def test_a_run_refuses_cells_on_another_processor_unless_allowed(finished):
    path, directory, (first, second) = finished
    move_to_other_cpu(first)
    second.unlink()  # the cell left to run, on this CPU
    text = one_error_line(invoke(str(path)))
    assert (f"holds cells run on Other CPU (DEFAULT), 1 cell, and this machine runs its cells on "
            f"{this_cpu()}") in text
    assert "run on Other CPU (DEFAULT), or pass --allow-mixed-hardware, or set another output_dir" in text
    assert not second.exists()  # nothing ran

    allowed = invoke(str(path), "--allow-mixed-hardware")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(second.read_text())["versions"]["device"] == "cpu"


def test_a_report_refuses_cells_of_two_processors_unless_allowed(finished):
    _, directory, (first, _) = finished
    summary = directory / "summary.md"
    assert f"Hardware: {this_cpu()}, all 2 cells." in summary.read_text()
    move_to_other_cpu(first)
    summary.unlink()
    text = one_error_line(invoke("report", str(directory)))
    assert "holds cells of 2 processors" in text and "Other CPU (DEFAULT), 1 cell" in text
    assert f"{this_cpu()}, 1 cell" in text and "--allow-mixed-hardware" in text
    assert not summary.exists()

    allowed = invoke("report", str(directory), "--allow-mixed-hardware")
    assert allowed.exit_code == 0, allowed.output
    assert "compare arms whose cells ran on the same hardware" in summary.read_text()


def test_a_cell_without_hardware_does_not_mix_with_a_known_one(finished):
    path, directory, (first, second) = finished
    record = json.loads(first.read_text())
    record.pop("versions")  # as a cell restored from a results table
    first.write_text(json.dumps(record))
    assert "not recorded, 1 cell" in one_error_line(invoke("report", str(directory)))
    second.unlink()
    assert "holds cells run on not recorded, 1 cell" in one_error_line(invoke(str(path)))


def test_the_processor_of_a_gpu_run_is_the_gpu_of_a_cpu_run_the_cpu():
    h100 = "NVIDIA H100 80GB HBM3"
    on_amd = {"cpu": "AMD EPYC 7R13", "cpu_capability": "AVX2", "gpu": h100, "device": "cuda"}
    on_intel = {"cpu": "Intel(R) Xeon(R)", "cpu_capability": "AVX512", "gpu": h100, "device": "cuda"}
    assert processor(on_amd) == processor(on_intel) == f"{h100} (GPU)"
    assert processor(on_amd | {"device": "cpu"}) == "AMD EPYC 7R13 (AVX2)"
    assert processor({"cpu": "AMD EPYC 7R13", "cpu_capability": "AVX2", "gpu": h100}) == f"{h100} (GPU)"
    assert processor({"python": "3.12"}) == "not recorded"
    assert processor(on_amd | {"cpu_capability": "AVX512", "device": "cpu"}) != processor(on_amd | {
        "device": "cpu"})


def test_the_run_check_accepts_only_one_processor_throughout():
    check_run(Path("d"), {}, {"A (AVX2)"}, allow=False)  # a new study
    check_run(Path("d"), {"A (AVX2)": 3}, {"A (AVX2)"}, allow=False)
    check_run(Path("d"), {"A (AVX2)": 3, "B (AVX2)": 1}, {"A (AVX2)"}, allow=True)
    for finished, here in (({"A (AVX2)": 3}, {"B (AVX2)"}), ({"A (AVX2)": 3, "B (AVX2)": 1}, {"A (AVX2)"}),
                           ({"A (AVX2)": 3}, {"A (AVX2)", "G (GPU)"})):
        with pytest.raises(StudyError, match="--allow-mixed-hardware"):
            check_run(Path("d"), finished, here, allow=False)


def test_a_job_on_another_processor_records_its_cell_as_failed_unless_allowed(finished):
    """--executor slurm|local: each job checks its own node; the refusal is its cell's error."""
    from layerif_core.study.executor import run_job

    _, directory, (first, second) = finished
    move_to_other_cpu(first)
    second.unlink()
    fingerprint = json.loads((directory / "study.json").read_text())["fingerprint"]
    assert run_job(str(directory), fingerprint, second.stem)["status"] == "failed"
    error = json.loads(second.read_text())["error"]
    assert error["type"] == "StudyError" and "run on Other CPU (DEFAULT)" in error["message"]
    assert run_job(str(directory), fingerprint, second.stem, True)["status"] == "ok"
