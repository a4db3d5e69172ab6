"""Running a study's cells as jobs through submitit: ``--executor slurm`` (a Slurm job array) or
``--executor local`` (the same path in local processes). ``--executor inline``, the default, is
:func:`layerif_core.study.runner.run_study`, one cell after the other in this process.

1. In the submitting process, every shared stage the unfinished cells need is computed once: the
   dense evaluation, and the layer scores of every distinct scoring config (with the LoRA adapter of
   the paper's route, and the influence matrix and factors under them).
2. One job per unfinished cell is submitted (a job array on Slurm). A job is
   :func:`run_job` ``(study directory, study fingerprint, cell id, allow mixed hardware)``: it reads
   the study from the directory's ``study.json``, checks its processor against the finished
   cells' (:mod:`layerif_core.study.hardware`), finds its scores on disk, runs its one cell and writes
   ``cells/<id>.json`` atomically, as the inline loop does. A job that is killed leaves no cell
   file; a rerun of the same command submits only the unfinished cells.
3. With ``wait`` the submitting process waits for the jobs, then the report is built; without it,
   it prints the job ids and the ``layerif study report DIR`` command.

submitit pickles the call (this module's :func:`run_job`, three strings and a flag) into
``<study>/submitit/<submission>/``, next to each job's logs and returned value; the job unpickles
it. Nothing else crosses the process boundary.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerif_core.errors import closest
from layerif_core.study.config import StudyConfig, StudyError

if TYPE_CHECKING:  # the runner imports torch; the CLI checks options without it
    from layerif_core.study.cells import Cell
    from layerif_core.study.runner import Display, Shared, Stage, StudyOutcome

log = logging.getLogger("layerif")

EXECUTORS = ("inline", "local", "slurm")
SLURM_ONLY = {"partition": "--partition", "cpus_per_cell": "--cpus-per-cell", "mem_gb": "--mem-gb",
              "slurm_args": "--slurm-arg"}
# sbatch flags the study sets itself, and the option that sets them
RESERVED_SLURM_ARGS = {"array": "the study (one task per unfinished cell)", "output": "submitit",
                       "error": "submitit", "job-name": "the study", "partition": "--partition",
                       "time": "--time (minutes)", "gpus-per-node": "--gpus-per-cell",
                       "cpus-per-task": "--cpus-per-cell", "mem": "--mem-gb"}
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local executor kills a job after 2 minutes by default
POLL_S = {"local": 0.2, "slurm": 10.0}


@dataclass
class ExecutorOptions:
    """How ``layerif study`` runs the cells: in this process, or as submitit jobs."""

    name: str = "inline"
    time_min: int | None = None
    partition: str | None = None
    gpus_per_cell: int | None = None
    cpus_per_cell: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    slurm_args: dict[str, str] = field(default_factory=dict)
    wait: bool | None = None

    @property
    def waits(self) -> bool:
        return self.wait is not False

    def check(self, shard: tuple[int, int] | None = None) -> None:
        """Every option fits the executor (one line naming the fix otherwise); nothing is written."""
        if self.name not in EXECUTORS:
            raise StudyError(f"--executor '{self.name}' is not one of {', '.join(EXECUTORS)}"
                             f"{closest(self.name, EXECUTORS)}.")
        self._check_scope(shard)
        if self.name == "inline":
            return
        self._check_values()
        if self.name == "slurm":
            self._check_slurm()

    def _check_scope(self, shard: tuple[int, int] | None) -> None:
        """No option of another executor."""
        slurm_only = [flag for attr, flag in SLURM_ONLY.items() if getattr(self, attr)]
        if slurm_only and self.name != "slurm":
            raise StudyError(f"{slurm_only[0]} applies to --executor slurm only; add --executor slurm or "
                             f"drop {slurm_only[0]}.")
        jobs_only = [flag for flag, value in (
            ("--time", self.time_min), ("--gpus-per-cell", self.gpus_per_cell),
            ("--array-parallelism", self.array_parallelism), ("--wait/--no-wait", self.wait))
            if value is not None]
        if jobs_only and self.name == "inline":
            raise StudyError(f"{jobs_only[0]} applies to --executor local or slurm; add one, or drop "
                             f"{jobs_only[0]} to run the cells in this process.")
        if shard is not None and self.name != "inline":
            raise StudyError(f"--shard runs a share of the cells in this process; --executor {self.name} "
                             "submits every unfinished cell itself: drop one of them.")
        if self.name == "local" and self.wait is False:
            raise StudyError("--no-wait needs --executor slurm: local jobs are started by this process "
                             "as others end (--array-parallelism at a time), so it waits for them.")

    def _check_values(self) -> None:
        for flag, value, low in (("--time", self.time_min, 1), ("--gpus-per-cell", self.gpus_per_cell, 0),
                                 ("--cpus-per-cell", self.cpus_per_cell, 1),
                                 ("--array-parallelism", self.array_parallelism, 1)):
            if value is not None and value < low:
                raise StudyError(f"{flag} {value} must be at least {low}.")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise StudyError(f"--mem-gb {self.mem_gb} must be more than 0.")
        for key in self.slurm_args:
            owner = RESERVED_SLURM_ARGS.get(key.replace("_", "-"))
            if owner is not None:
                raise StudyError(f"--slurm-arg {key}=... is set by {owner}; drop it.")

    def _check_slurm(self) -> None:
        if self.time_min is None:
            raise StudyError("--executor slurm needs --time MINUTES, the wall-clock limit of one cell's "
                             "job (submitit's default would be 5 minutes).")
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise StudyError(f"--executor slurm: no `{missing[0]}` on this machine's PATH; run from a "
                             "Slurm login node, or use --executor local, or an `sbatch --array` script "
                             "calling --shard k/N (docs/studies.md).")


def parse_slurm_args(items: list[str] | None) -> dict[str, str]:
    """``["account=proj", "qos=high"]`` -> ``{"account": "proj", "qos": "high"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StudyError(f"--slurm-arg '{item}' must look like KEY=VALUE (an sbatch option without "
                             "its dashes, e.g. account=myproject or qos=high).")
        out[key.strip()] = value.strip()
    return out


def load_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise StudyError("--executor local|slurm needs submitit: pip install submitit (or layerif's "
                         "`slurm` extra).") from None
    return submitit


def make_executor(options: ExecutorOptions, folder: Path, job_name: str) -> Any:
    """A submitit executor with the options: the local one, or Slurm's (job array)."""
    submitit = load_submitit()
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=options.name)
    except RuntimeError as exc:  # no srun
        raise StudyError(f"--executor {options.name}: submitit cannot use this machine ({exc}); run from "
                         "a Slurm login node, or use --executor local.") from None
    params: dict[str, Any] = {"name": job_name,
                              "timeout_min": options.time_min or LOCAL_TIMEOUT_MIN}
    if options.gpus_per_cell is not None:
        params["gpus_per_node"] = options.gpus_per_cell
    if options.name == "slurm":
        slurm = {"cpus_per_task": options.cpus_per_cell, "mem_gb": options.mem_gb,
                 "slurm_partition": options.partition,
                 "slurm_array_parallelism": options.array_parallelism}
        params.update({k: v for k, v in slurm.items() if v is not None})
        if options.slurm_args:
            params["slurm_additional_parameters"] = dict(options.slurm_args)
    executor.update_parameters(**params)
    return executor


# --- in the job ----------------------------------------------------------------------------------

def run_job(directory: str, fingerprint: str, cell_id: str,
            allow_mixed_hardware: bool = False) -> dict[str, Any]:
    """One cell of the study in ``directory`` (what a submitit job runs). Returns the cell's status
    and the shared stages the job had to compute itself (none when the submitter prepared them).
    A job on a processor other than the study's finished cells' records its cell as failed with
    the reason, unless ``allow_mixed_hardware`` (:mod:`layerif_core.study.hardware`)."""
    from layerif_core import logs
    from layerif_core.artifacts import package_versions
    from layerif_core.study.runner import (
        Shared,
        cell_versions,
        check_processor,
        execute_cell,
        finish_record,
        new_record,
        record_failure,
    )

    logs.setup(debug=False, quiet=False)  # layerif's messages on stderr: the job's .err log
    study_dir = Path(directory)
    study, cell = job_cell(study_dir, fingerprint, cell_id)
    logs.attach_run_log(study_dir)
    shared = Shared(study_dir)
    versions = package_versions()
    try:
        check_processor(study_dir, [cell], versions, allow_mixed_hardware)
    except StudyError as exc:
        record = new_record(cell, study)
        record_failure(record, exc)
        finish_record(study_dir, study, record, 0.0, cell_versions(cell, versions))
        return {"cell": cell.id, "status": record.status, "computed": dict(shared.computed)}
    log.info("cell %s (%s)", cell.id, cell.describe())
    record = execute_cell(cell, study, shared, study_dir, versions,
                          lambda stage: log.info("%s: %s", cell.id, stage))
    return {"cell": cell.id, "status": record.status, "computed": dict(shared.computed)}


def job_cell(directory: Path, fingerprint: str, cell_id: str) -> tuple[StudyConfig, Cell]:
    """The study config and the cell ``cell_id`` (with its run config) from ``directory/study.json``,
    checked to be the study the job was submitted for."""
    from layerif_core.study.cells import Cell, cell_config
    from layerif_core.study.runner import read_json

    meta = read_json(directory / "study.json")
    if meta is None or meta.get("fingerprint") != fingerprint:
        raise StudyError(f"'{directory}' no longer holds the study this job was submitted for (restarted "
                         "with --force or another study config); resubmit the study.")
    study = StudyConfig.model_validate(meta["study"])
    for point in study.points():
        for arm in study.arms:
            for seed in study.seeds:
                cell = Cell(arm.label, point, seed)
                if cell.id == cell_id:
                    cell.config = cell_config(meta["base"], study, cell, str(directory / "runs"))
                    return study, cell
    raise StudyError(f"'{directory}' has no cell {cell_id}; resubmit the study.")


# --- in the submitting process -------------------------------------------------------------------

def prepare_shared(study: StudyConfig, cells: list[Cell], todo: list[Cell], shared: Shared,
                   directory: Path, versions: dict[str, str], stage: Stage) -> list[str]:
    """Compute the shared stages of the unfinished cells ``todo`` once each: the dense evaluation,
    and the scores of every distinct scoring config. A scoring config that fails fails its cells
    (recorded, not submitted), as in the inline loop; returns their ids."""
    from layerif_core.study.runner import finish_record, new_record, record_failure

    if study.dense and cells:
        stage("dense evaluation")
        shared.dense(cells[0].config, stage)
    by_scores: dict[Path, list[Cell]] = {}
    for cell in todo:
        by_scores.setdefault(shared.scores_path(cell.config), []).append(cell)
    failed = []
    for i, group in enumerate(by_scores.values()):
        stage(f"scores {i + 1} of {len(by_scores)}")
        start = time.perf_counter()
        try:
            shared.scores(group[0].config, stage)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # as when each of these cells computed them: each fails
            for cell in group:
                record = new_record(cell, study)
                record_failure(record, exc)
                finish_record(directory, study, record, time.perf_counter() - start, versions)
                failed.append(cell.id)
    return failed


@dataclass
class Submission:
    """Jobs of a study's unfinished cells: submitted (all on Slurm; on the local executor the first
    ``array_parallelism``, the others as those end, by :meth:`wait`)."""

    options: ExecutorOptions
    executor: Any  # submitit's
    folder: Path
    fingerprint: str
    outcome: StudyOutcome
    pending: list[str]
    allow_mixed_hardware: bool = False
    jobs: dict[str, Any] = field(default_factory=dict)  # cell id -> submitit job

    def submit(self, cell_ids: list[str]) -> None:
        from layerif_core.study.runner import write_json

        if not cell_ids:
            return
        directory = str(self.outcome.directory.resolve())
        n = len(cell_ids)
        try:
            jobs = self.executor.map_array(run_job, [directory] * n, [self.fingerprint] * n, cell_ids,
                                           [self.allow_mixed_hardware] * n)
        except Exception as exc:  # sbatch refused (partition, account, limits, ...)
            message = str(exc).strip().splitlines()
            raise StudyError(f"submitting {n} jobs failed: {type(exc).__name__}: "
                             f"{message[0] if message else 'no message'} (script and pickles in "
                             f"{self.folder}); fix the option it names and rerun.") from None
        for cell_id, job in zip(cell_ids, jobs, strict=True):
            self.jobs[cell_id] = job
            self.outcome.jobs[cell_id] = str(job.job_id)
        write_json(self.folder / "jobs.json", self.outcome.jobs)  # which job ran which cell: its logs

    def start(self) -> None:
        """Submit what may start now: every job on Slurm, ``array_parallelism`` locally."""
        if self.options.name == "slurm":
            todo, self.pending = self.pending, []
        else:
            free = (self.options.array_parallelism or 1) - sum(1 for j in self.jobs.values() if not j.done())
            todo, self.pending = self.pending[:max(free, 0)], self.pending[max(free, 0):]
        self.submit(todo)

    def wait(self, display: Display | None = None) -> StudyOutcome:
        """Wait for every job (submitting the rest locally as others end), then sort the cells into
        ran / failed / lost (a job that ended without writing its cell: killed, timed out)."""
        try:
            while True:
                self.start()
                running = sum(1 for j in self.jobs.values() if not j.done())
                if display is not None:
                    display.done = len(self.outcome.skipped) + len(self.jobs) - running
                    display.update(cell="jobs", stage=f"{len(self.pending)} waiting", running=running)
                if not running and not self.pending:
                    break
                time.sleep(POLL_S[self.options.name])
        except KeyboardInterrupt:
            if self.options.name == "local":  # local jobs would outlive this process
                for job in self.jobs.values():
                    job.cancel(check=False)
            else:
                ids = sorted({str(job.job_id).split("_")[0] for job in self.jobs.values()})
                log.warning("the Slurm jobs keep running (scancel %s stops them); when they end: "
                            "layerif study report %s", " ".join(ids), self.outcome.directory)
            raise
        return self.collect()

    def collect(self) -> StudyOutcome:
        from layerif_core.study.runner import cell_result

        outcome = self.outcome
        totals: dict[str, int] = {}
        for cell_id, job in self.jobs.items():
            found = cell_result(outcome.directory, cell_id)
            if found is None:
                outcome.lost.append(cell_id)
                log.warning("cell %s: job %s ended without writing it (killed, timed out or cancelled; "
                            "logs: %s)", cell_id, job.job_id, job.paths.stderr)
            else:
                (outcome.ran if found.ok else outcome.failed).append(cell_id)
            result = job_result(job)
            for key, value in (result or {}).get("computed", {}).items():
                totals[key] = totals.get(key, 0) + value
        outcome.jobs_shared = {k: totals.get(k, 0) for k in outcome.shared}
        return outcome


def job_result(job: Any) -> dict[str, Any] | None:
    """What :func:`run_job` returned, or None for a job that ended without a result."""
    if not job.paths.result_pickle.exists():
        return None
    try:
        return job.result()
    except Exception:  # the job raised (its error is in its log)
        return None


def submit_study(path: str | Path, options: ExecutorOptions, force: bool = False,
                 data: dict[str, Any] | None = None, show_progress: bool = False,
                 console: Any = None, arms: list[str] | None = None,
                 seeds: list[int] | None = None, points: list[str] | None = None,
                 allow_mixed_hardware: bool = False) -> Submission:
    """Prepare the shared stages of the study's unfinished cells once, then submit a job per cell
    (see the module's docstring); ``Submission.wait()`` waits for them. ``arms``, ``seeds``,
    ``points``: only those cells (``--arm``, ``--seed``, ``--grid``). Each job checks its own
    processor against the finished cells' (``allow_mixed_hardware``: it does not)."""
    from layerif_core import logs
    from layerif_core.artifacts import package_versions
    from layerif_core.study.runner import Display, Shared, StudyOutcome, prepare_study, unfinished

    options.check()
    load_submitit()
    study, directory, cells = prepare_study(path, force, data, arms, seeds, points)
    outcome = StudyOutcome(directory, len(cells))
    todo, outcome.skipped = unfinished(directory, cells)
    if outcome.skipped:
        log.info("%d of %d cells finished earlier: skipped", len(outcome.skipped), len(cells))
    logs.attach_run_log(directory)
    shared = Shared(directory)
    with Display(len(cells), show_progress, console) as display:
        display.done = len(outcome.skipped)
        display.update(cell="shared stages", stage="")
        outcome.failed = prepare_shared(study, cells, todo, shared, directory, package_versions(),
                                        lambda s: display.update(stage=s))
    outcome.shared = dict(shared.computed)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    folder = directory.resolve() / "submitit" / stamp
    executor = make_executor(options, folder, f"layerif-{study.name}")
    submission = Submission(options, executor, folder, study.fingerprint(), outcome,
                            [c.id for c in todo if c.id not in outcome.failed],
                            allow_mixed_hardware=allow_mixed_hardware)
    submission.start()
    return submission
