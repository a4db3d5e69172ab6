"""Running a study: every cell's stages, with the shared work done once (architecture §9).

Directory ``<output_dir>/<name>/``:

- ``study.json``: the study config, its base run config and its fingerprint (a rerun with another
  study config refuses to mix results, unless ``--force`` starts over; a study that grew, with arms,
  grid values or seeds added, or changed only where no cell finished, keeps its finished cells:
  :func:`growth_conflict`);
- ``cells/<id>.json``: one atomic JSON per finished cell (metrics, allocation, scores, timings,
  versions, or the error); a rerun skips the cells that finished and reruns failed ones;
- ``shared/scores/``: layer scores, once per (scorer sub-config, model, data, seed where the scorer
  uses it). The run directory of a score excludes the aggregator and post-processing, so the
  influence matrix ``I[l, i]`` and the EK-FAC factors (cached by fingerprint in that run directory)
  are computed once for LayerIF +VE, TOP-25% and ALL alike;
- ``shared/adapters/``: the LoRA adapters of arms that score through one (``layers.lora_only``
  without ``model.adapter``: the paper's route fine-tunes first, once per fine-tuning config);
- ``shared/dense/``: the evaluation of the unmodified model, once;
- ``shared/select/``: the held-out values of ``select`` candidates (their scores go to
  ``shared/scores/`` under the keys of :mod:`layerif_core.scoring_keys`, shared with the arms);
- ``shared/outcomes/``: what each application + evaluation measured, keyed by everything it
  depends on (:func:`outcome_key`): a cell whose allocation equals a finished cell's under the same
  application, evaluation, data and seed (``select`` applying the candidate another arm runs)
  takes that cell's metrics instead of pruning and evaluating again;
- ``runs/<id>/``: a cell's run directory (removed after the cell unless ``keep_runs``).

Stages of a cell: scores (shared) → allocation → application → evaluation. The application acts on
the base model (a scoring adapter is not part of it: :mod:`layerif_core.scope`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from layerif_core.artifacts import atomic_path, package_versions
from layerif_core.config import RunConfig
from layerif_core.scoring_keys import (
    key,
    needs_finetune,
    scores_key,
    scores_use_seed,
    scoring_config,
    scoring_run_key,
)
from layerif_core.study.cells import Cell, build_cells, select_cells
from layerif_core.study.config import StudyConfig, StudyError, load_study
from layerif_core.study.hardware import check_run, count, device_type, processor
from layerif_core.study.records import SHARED, CellError, CellRecord, dense_dir

log = logging.getLogger("layerif")

Stage = Callable[[str], None]


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --- study directory ---------------------------------------------------------------------------

def open_study_dir(study: StudyConfig, base: dict[str, Any], directory: Path, force: bool) -> None:
    """Create ``directory`` for ``study``, or check that it was made by the same study config."""
    meta = directory / "study.json"
    found = read_json(meta)
    fp = study.fingerprint()
    if found is not None and found.get("fingerprint") != fp and not force:
        conflict = growth_conflict(found, study, base, directory)
        if conflict is not None:
            raise StudyError(f"'{directory}' holds a study made by a different study config ({conflict}); "
                             "a study may grow or change where no cell finished, not change a finished "
                             "cell's run; use another name or output_dir, or --force to start over.")
        log.info("the study file changed where no cell finished: the finished cells are kept")
    if found is not None and force:
        for sub in ("cells", "shared", "runs", "plots"):
            shutil.rmtree(directory / sub, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    created = found.get("created") if found is not None and not force else None
    # the same cells: the report settings (metrics, test, ...) of the latest study file apply
    write_json(meta, {"fingerprint": fp, "study": study.model_dump(mode="json"), "base": base,
                      "created": created or datetime.now(UTC).isoformat(timespec="seconds")})


def growth_conflict(found: dict[str, Any], study: StudyConfig, base: dict[str, Any],
                    directory: Path) -> str | None:
    """Why the finished cells of ``directory`` (made by the study recorded in ``found``, its
    ``study.json``) are not cells of ``study``, or None when they all are: the same base run config
    and grid axes, and each finished cell's arm unchanged, its grid point and seed still there. A
    cell's id names its arm, grid point and seed only, so this is what makes a kept cell the run
    ``study`` would make. Arms, grid values and seeds without a finished cell may change freely."""
    done = [c for c in (cell_result(directory, p.stem) for p in sorted((directory / "cells").glob("*.json")))
            if c is not None and c.ok]
    if not done:
        return None
    try:
        old = StudyConfig.model_validate(found.get("study") or {})
    except ValueError:
        return "its study.json does not read as a study"
    if json.dumps(found.get("base"), sort_keys=True) != json.dumps(base, sort_keys=True):
        return "the base run config differs"
    if old.axes != study.axes:
        return "the grid axes differ"
    before, now = {a.label: a for a in old.arms}, {a.label: a for a in study.arms}
    points = {json.dumps(p, sort_keys=True) for p in study.points()}
    for cell in done:
        if cell.arm not in now:
            return f"arm '{cell.arm}' is gone"
        if cell.arm not in before or before[cell.arm].model_dump() != now[cell.arm].model_dump():
            return f"arm '{cell.arm}' changed"
        if json.dumps(cell.grid, sort_keys=True) not in points:
            return f"grid point {cell.grid} is gone"
        if cell.seed not in study.seeds:
            return f"seed {cell.seed} is gone"
    return None


def cell_result(directory: Path, cell_id: str) -> CellRecord | None:
    """The record of cell ``cell_id``, or None when it has none that reads (it is then rerun)."""
    found = read_json(directory / "cells" / f"{cell_id}.json")
    try:
        return None if found is None else CellRecord.from_json(found)
    except StudyError:
        return None


# --- shared stages -----------------------------------------------------------------------------

def compute_once(path: Path, run: Path, what: str, stage: Stage, compute: Callable[[], Any],
                 read: Callable[[], Any]) -> tuple[Any, bool]:
    """A shared stage's result, kept at ``path``, computed once per study directory: ``read()``
    once it is there, else ``compute()`` (which writes it), and whether it was reused. The stage's
    run directory ``run`` is locked while it is computed, and freed once its result is written:
    another process of the study (a shard, a run of other ``--arm``s) that finds it in use waits
    for that process's result and reads it; if that process ended without one, this one computes it."""
    from layerif_core.runlock import holding_lock

    if not path.is_file():
        run.mkdir(parents=True, exist_ok=True)
        # re-entrant: the stage's own run takes the same lock, freed here once the result is written
        with holding_lock(run, lambda: stage(f"{what}: waiting for another process")):
            if not path.is_file():
                return compute(), False
    return read(), True


class ModelCache:
    """One pristine copy of the last base model loaded; every stage gets its own deep copy."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    def get(self, spec: Any) -> tuple[Any, Any]:
        from layerif_core.models import attach_adapter, load_model

        base_spec = spec.model_copy(update={"adapter": None})
        key = base_spec.model_dump_json()
        if key != self._key:
            self._model = self._tokenizer = None
            self._model, self._tokenizer = load_model(base_spec)
            self._key = key
        model = copy.deepcopy(self._model)
        if spec.adapter:
            model = attach_adapter(model, spec.adapter)
            model.eval()
        return model, self._tokenizer


@dataclass
class Shared:
    """The shared stages of a study directory (scores, adapters, dense evaluation)."""

    directory: Path
    models: ModelCache = field(default_factory=ModelCache)
    computed: dict[str, int] = field(default_factory=lambda: {"scores": 0, "adapters": 0, "dense": 0})

    def scores_use_seed(self, cfg: RunConfig) -> bool:
        """Whether the layer scores of ``cfg`` can change with the run's seed, as the scorer declared
        when it registered (:meth:`~layerif_core.registry.Registry.uses_seed`; ``layerif`` asks its
        estimator, the data and the scoring adapter). Scores that cannot are computed once for
        every seed."""
        return scores_use_seed(cfg)

    def adapter(self, cfg: RunConfig, stage: Stage) -> RunConfig:
        """The paper's route: LoRA-fine-tune once, then score through the adapter."""
        if not needs_finetune(cfg):
            return cfg
        from layerif_core.finetune import finetune
        from layerif_core.runlock import holding_lock

        out = self.adapter_path(cfg)
        cfg = cfg.model_copy(deep=True)
        cfg.finetune.output = str(out)
        stage("fine-tuning the scoring adapter")
        out.mkdir(parents=True, exist_ok=True)
        # another process training this adapter is waited for; finetune then reuses its adapter
        with holding_lock(out, lambda: stage("fine-tuning the scoring adapter: waiting for another process")):
            model, tokenizer = self.models.get(cfg.model)
            result = finetune(cfg, model=model, tokenizer=tokenizer, show_progress=False)
        if not result.reused:
            self.computed["adapters"] += 1
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": str(out)})})

    @property
    def root(self) -> Path:
        """Where the shared stages are kept (also the cache root ``select`` reuses across cells)."""
        return self.directory / SHARED

    def scores_path(self, cfg: RunConfig) -> Path:
        """Where the layer scores of ``cfg`` are kept (one file per distinct scoring config)."""
        return self.root / "scores" / f"{scores_key(cfg)}.json"

    def scores(self, cfg: RunConfig, stage: Stage) -> tuple[Any, bool]:
        """The :class:`LayerScores` of ``cfg``'s scorer for the task ``apply_to`` names (the only
        task when there is one), and whether they were reused."""
        from layerif_core.artifacts import read_scores
        from layerif_core.pipeline import compute_layer_scores, open_run

        scoring = scoring_config(cfg)
        path = self.scores_path(cfg)
        task = cfg.application_task("layerif study")

        def compute() -> Any:
            stage("scores")
            scored = self.adapter(cfg.model_copy(update={"seed": scoring["seed"]}), stage)
            run_cfg = scored.model_copy(update={"name": scoring_run_key(scoring), "allocation": None,
                                                "application": None, "evaluation": [],
                                                "output_dir": str(self.scoring_runs),
                                                "seed": scoring["seed"]})
            model, tokenizer = self.models.get(run_cfg.model)
            ctx = open_run(run_cfg, show_progress=False, model=model, tokenizer=tokenizer)
            scores = compute_layer_scores(ctx)
            write_json(path, {t: s.to_json() for t, s in scores.items()})
            self.computed["scores"] += 1
            return scores[task]

        return compute_once(path, self.scoring_runs / scoring_run_key(scoring), "scores", stage, compute,
                            lambda: read_scores(path)[task])

    def outcome_path(self, cfg: RunConfig, allocation: Any) -> Path:
        """Where the application + evaluation outcome of ``cfg`` with ``allocation`` is kept."""
        return self.root / "outcomes" / f"{outcome_key(cfg, allocation)}.json"

    @property
    def scoring_runs(self) -> Path:
        """Where the scoring runs are kept (one per scoring config, named by its run key)."""
        return self.root / "runs"

    def dense_path(self, cfg: RunConfig) -> Path:
        """Where the unmodified base model's metrics are kept (one file per model, evaluation, tasks)."""
        what = cfg.model_dump(mode="json", include={"model", "evaluation", "tasks"})
        what["model"]["adapter"] = None
        return dense_dir(self.directory) / f"{key(what)}.json"

    def adapter_path(self, cfg: RunConfig) -> Path:
        """Where the scoring adapter of ``cfg`` (the paper's route) is kept."""
        name = key([cfg.model_dump(mode="json", include={"model", "finetune", "tasks", "seed"})])
        return self.root / "adapters" / name

    def dense(self, cfg: RunConfig, stage: Stage) -> dict[str, Any] | None:
        """Metrics of the unmodified base model (no adapter, no application), once."""
        if not cfg.evaluation:
            return None
        from layerif_core.evaluation import evaluate_model
        from layerif_core.pipeline import open_run
        from layerif_core.scope import application_layers

        path = self.dense_path(cfg)

        def compute() -> dict[str, Any]:
            stage("dense evaluation")
            dense_cfg = cfg.model_copy(update={
                "name": path.stem, "output_dir": str(path.parent), "allocation": None,
                "application": None, "layers": application_layers(cfg.layers),
                "model": cfg.model.model_copy(update={"adapter": None})})
            model, tokenizer = self.models.get(dense_cfg.model)
            ctx = open_run(dense_cfg, show_progress=False, model=model, tokenizer=tokenizer)
            start = time.perf_counter()
            metrics = evaluate_model(ctx, model, tokenizer).metrics
            result = {"metrics": metrics, "seconds": round(time.perf_counter() - start, 3),
                      "model": cfg.model.source}
            write_json(path, result)
            self.computed["dense"] += 1
            return result

        return compute_once(path, path.with_suffix(""), "dense evaluation", stage, compute,
                            lambda: read_json(path))[0]


# --- one cell ----------------------------------------------------------------------------------

def outcome_key(cfg: RunConfig, allocation: Any) -> str:
    """What the application and the evaluation of a cell depend on: its application config (model,
    data, seed, application, evaluation; not its name, scorer or allocator) and the allocation it
    applies (kind, values, and the details an application may read, less ``select``'s record of
    its choice)."""
    what = cfg.model_dump(mode="json", exclude={"name", "output_dir", "scorer", "allocation"})
    details = {k: v for k, v in allocation.details.items() if k != "select"}
    return key([what, allocation.kind, [float(v) for v in allocation.values], details])


def run_cell(cell: Cell, shared: Shared, stage: Stage) -> dict[str, Any]:
    """Scores → allocation → application → evaluation of one cell, on the task ``apply_to`` names;
    returns its result record."""
    from layerif_core.pipeline import allocate, apply_allocation, open_run
    from layerif_core.scope import application_layers

    cfg = cell.config
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scores, reused = shared.scores(cfg, stage)
    timings["scores"] = round(time.perf_counter() - start, 3)
    record: dict[str, Any] = {"scores": {"values": [float(v) for v in scores.values],
                                         "higher_is_better": scores.higher_is_better,
                                         "scorer": scores.scorer, "reused": reused,
                                         "details": scores.details}}
    # the application acts on the base model: no scoring adapter, base linear modules
    app_cfg = cfg.model_copy(update={"layers": application_layers(cfg.layers),
                                     "model": cfg.model.model_copy(update={"adapter": None})})
    stage("loading the model")
    model, tokenizer = shared.models.get(app_cfg.model)
    ctx = open_run(app_cfg, show_progress=False, model=model, tokenizer=tokenizer)
    ctx.cache_dir = shared.root  # what select reuses across cells (scores, held-out values)
    task = cfg.application_task("layerif study")
    allocation = None
    if cfg.allocation is not None:
        stage("allocation")
        # the allocation sees the cell's scoring layers, as in `layerif run`: a select candidate
        # without `layers` scores through them (its budget weights are the application's either way)
        scoring = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"layers": cfg.layers}))
        allocation = allocate(scoring, {task: scores})[task]
        record["allocation"] = {"kind": allocation.kind, "allocator": allocation.allocator,
                                "values": [float(v) for v in allocation.values]}
        if "select" in allocation.details:  # which candidate won, and every candidate's held-out value
            record["allocation"]["select"] = allocation.details["select"]
    if cfg.application is not None and allocation is None:
        raise StudyError(f"{cell.describe()}: an application needs an `allocation:` section.")
    outcome = shared.outcome_path(app_cfg, allocation) if allocation is not None else None
    found = read_json(outcome) if outcome is not None else None
    if found is not None:  # the same pruned model, measured alike, finished in another cell
        record.update(curves=found["curves"], metrics=found["metrics"], timings=timings,
                      outcome={"key": outcome.stem, "reused_from": found["cell"]})
        return record
    applied = apply_allocation(ctx, task, allocation, model, tokenizer, stage=stage)
    if cfg.application is not None:
        record["curves"] = applied.curves
    timings.update(applied.seconds)
    record["metrics"] = {k: float(v) for k, v in applied.metrics.items()}
    record["timings"] = timings
    if outcome is not None:
        write_json(outcome, {"cell": cell.id, "metrics": record["metrics"],
                             "curves": record.get("curves"), "timings": applied.seconds})
        record["outcome"] = {"key": outcome.stem}
    return record


# --- the study ---------------------------------------------------------------------------------

@dataclass
class StudyOutcome:
    """What a run of the study did (the cells are on disk in ``directory/cells``)."""

    directory: Path
    total: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    shared: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # jobs that ended without a result (--executor)
    jobs: dict[str, str] = field(default_factory=dict)  # cell id -> job id (--executor)
    jobs_shared: dict[str, int] = field(default_factory=dict)  # shared work the jobs computed


class Display:
    """Cells done / running / failed and the current cell's stage (rich; silent when off)."""

    def __init__(self, total: int, show: bool, console: Any = None):
        self.total, self.done, self.failed = total, 0, 0
        self.cell, self.stage = "", ""
        self.progress = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console or Console(stderr=True))
            self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, stage: str | None = None, cell: str | None = None, running: int | None = None) -> None:
        self.stage = stage if stage is not None else self.stage
        self.cell = cell if cell is not None else self.cell
        running = running if running is not None else 1 if self.cell else 0
        text = (f"{self.done} done, {running} running, {self.failed} failed"
                + (f" | {self.cell}: {self.stage}" if self.cell else ""))
        if self.progress is not None:
            self.progress.update(self.task, description=text, completed=self.done + self.failed)
        else:
            log.debug(text)

    def finish(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.update(stage="", cell="")


def prepare_study(path: str | Path, force: bool = False, data: dict[str, Any] | None = None,
                  arms: list[str] | None = None, seeds: list[int] | None = None,
                  points: list[str] | None = None) -> tuple[StudyConfig, Path, list[Cell]]:
    """Read and check the study (every cell's config) and open its directory: nothing is written
    before every cell validates. ``arms``, ``seeds``, ``points``: only those cells (``--arm``,
    ``--seed``, ``--grid``; :func:`~layerif_core.study.cells.select_cells`)."""
    study, base = load_study(path, data)
    directory = Path(study.output_dir) / study.name
    cells = select_cells(build_cells(study, base, output_dir=str(directory / "runs")), arms, seeds,
                         points)
    open_study_dir(study, base, directory, force)
    return study, directory, cells


def unfinished(directory: Path, cells: list[Cell]) -> tuple[list[Cell], list[str]]:
    """The cells to run (never run, failed or interrupted) and the ids of those finished earlier."""
    todo, skipped = [], []
    for cell in cells:
        found = cell_result(directory, cell.id)
        if found is not None and found.ok:
            skipped.append(cell.id)
        else:
            todo.append(cell)
    return todo, skipped


def cell_versions(cell: Cell, versions: dict[str, str]) -> dict[str, str]:
    """``versions`` (:func:`~layerif_core.artifacts.package_versions`) with the kind of device the
    cell runs on, which says whether its processor is the CPU or the GPU
    (:func:`~layerif_core.study.hardware.processor`)."""
    return versions | {"device": device_type(cell.config.model.device)}


def finished_processors(directory: Path) -> dict[str, int]:
    """How many of the finished cells in ``directory/cells`` ran on each processor."""
    found = (cell_result(directory, p.stem) for p in sorted((directory / "cells").glob("*.json")))
    return count(processor(r.versions) for r in found if r is not None and r.ok)


def check_processor(directory: Path, todo: list[Cell], versions: dict[str, str], allow: bool) -> None:
    """Refuse to run ``todo`` on this machine when the study's finished cells ran on another
    processor, unless ``allow`` (``--allow-mixed-hardware``; :mod:`layerif_core.study.hardware`)."""
    if allow or not todo:
        return
    check_run(directory, finished_processors(directory),
              {processor(cell_versions(c, versions)) for c in todo}, allow)


def new_record(cell: Cell, study: StudyConfig) -> CellRecord:
    return CellRecord(id=cell.id, arm=cell.arm, grid=cell.point, seed=cell.seed,
                      control=cell.arm == study.control.label)


def record_failure(record: CellRecord, exc: Exception) -> None:
    """Mark ``record`` failed with ``exc`` (call it in the ``except`` block: it keeps the traceback)."""
    record.status, record.error = "failed", CellError.from_exception(exc)
    log.warning("cell %s failed: %s: %s", record.id, type(exc).__name__, exc)


def finish_record(directory: Path, study: StudyConfig, record: CellRecord, seconds: float,
                  versions: dict[str, str]) -> None:
    """Write ``cells/<id>.json`` atomically (a killed process leaves no half cell) and remove the
    cell's run directory unless ``keep_runs``."""
    from layerif_core import logs

    record.seconds = round(seconds, 3)
    record.versions = versions
    record.finished = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(directory / "cells" / f"{record.id}.json", record.to_json())
    logs.attach_run_log(directory)  # between cells the study's log.txt (a cell's run dir may go)
    if record.ok and not study.keep_runs:
        shutil.rmtree(directory / "runs" / record.id, ignore_errors=True)


def execute_cell(cell: Cell, study: StudyConfig, shared: Shared, directory: Path,
                 versions: dict[str, str], stage: Stage) -> CellRecord:
    """Run one cell and record it: its result, or its error (a failed cell does not stop a study)."""
    record = new_record(cell, study)
    start = time.perf_counter()
    try:
        record = record.with_result(run_cell(cell, shared, stage))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed cell is recorded; the others go on
        record_failure(record, exc)
    finish_record(directory, study, record, time.perf_counter() - start, cell_versions(cell, versions))
    return record


def run_study(path: str | Path, shard: tuple[int, int] | None = None, force: bool = False,
              show_progress: bool = True, data: dict[str, Any] | None = None,
              console: Any = None, arms: list[str] | None = None,
              seeds: list[int] | None = None, points: list[str] | None = None,
              allow_mixed_hardware: bool = False) -> StudyOutcome:
    """Run the cells of the study file ``path`` (those of ``shard`` ``(k, N)`` only, if given), one
    after the other in this process (``--executor inline``; :mod:`layerif_core.study.executor`
    submits them as jobs instead).

    ``data``: the study as a mapping instead of the file's content (``path`` then only names it
    and anchors a relative ``base`` path). ``console``: the rich console of the progress display
    (the one the log handler writes to, so that log lines do not tear the display). ``arms``,
    ``seeds``, ``points``: run only those cells (the report shows every finished cell).
    ``allow_mixed_hardware``: run them even where the finished cells ran on another processor
    (otherwise a :class:`StudyError` before any cell runs)."""
    from layerif_core import logs

    study, directory, cells = prepare_study(path, force, data, arms, seeds, points)
    mine = [c for c in cells if shard is None or c.in_shard(*shard)]
    outcome = StudyOutcome(directory, len(mine))
    shared = Shared(directory)
    todo, outcome.skipped = unfinished(directory, mine)
    if outcome.skipped:
        log.info("%d of %d cells finished earlier: skipped", len(outcome.skipped), len(mine))
    versions = package_versions()
    check_processor(directory, todo, versions, allow_mixed_hardware)
    logs.attach_run_log(directory)
    with Display(len(mine), show_progress, console) as display:
        display.done = len(outcome.skipped)
        if study.dense and (shard is None or shard[0] == 0) and mine:
            display.update(cell="dense model")
            shared.dense(mine[0].config, lambda s: display.update(stage=s))
            display.update(cell="", stage="")
        for cell in todo:
            display.update(stage="starting", cell=cell.id)
            record = execute_cell(cell, study, shared, directory, versions,
                                  lambda s: display.update(stage=s))
            (outcome.ran if record.ok else outcome.failed).append(cell.id)
            display.finish(record.ok)
    outcome.shared = dict(shared.computed)
    return outcome
