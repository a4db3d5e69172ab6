"""What a study directory records, typed: one :class:`CellRecord` per ``cells/<id>.json`` (written by
the runner, read by the executor and the report), and :class:`StudyData`, a study directory read back.

The JSON on disk is the record's :meth:`CellRecord.to_json`; :meth:`CellRecord.from_json` reads
every cell file layerif has written, and tolerates what older or hand-made ones lack (``control``,
``timings``, ``versions``; a record restored from a results table with its metrics only). Keys it
does not know are kept and written back unchanged.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerif_core.errors import LayerifError
from layerif_core.study.config import StudyConfig, StudyError

OK, FAILED = "ok", "failed"
SHARED = "shared"  # the study directory's folder of shared stages (the runner's ``Shared.root``)


def dense_dir(directory: Path) -> Path:
    """Where a study directory keeps the unmodified model's metrics (one JSON per model, evaluation
    and tasks: the runner's ``Shared.dense_path``)."""
    return directory / SHARED / "dense"


@dataclass
class CellError:
    """Why a cell failed: the exception's type and message, whether it was the user's input (a
    :class:`~layerif_core.errors.LayerifError`), and the traceback."""

    type: str
    message: str
    user_error: bool = False
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> CellError:
        return cls(type(exc).__name__, str(exc), isinstance(exc, LayerifError),
                   traceback.format_exc(limit=20))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellError:
        return cls(str(data.get("type", "Error")), str(data.get("message", "")),
                   bool(data.get("user_error", False)), str(data.get("traceback", "")))

    @property
    def first_line(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


@dataclass
class CellScores:
    """The layer scores a cell allocated from (``reused``: read from the study's shared scores)."""

    values: list[float]
    higher_is_better: bool
    scorer: str = ""
    reused: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellScores:
        return cls([float(v) for v in data.get("values") or []], bool(data.get("higher_is_better", False)),
                   str(data.get("scorer", "")), bool(data.get("reused", False)),
                   dict(data.get("details") or {}))


@dataclass
class CellAllocation:
    """The per-layer allocation a cell applied (``kind``: ``sparsity`` or ``experts``)."""

    kind: str
    values: list[float]
    allocator: str = ""
    select: dict[str, Any] | None = None  # a `select` allocation: the chosen candidate, every value

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellAllocation:
        return cls(str(data.get("kind", "")), [float(v) for v in data.get("values") or []],
                   str(data.get("allocator", "")), data.get("select"))


@dataclass
class CellRecord:
    """One cell's result: who it is (arm, grid point, seed), its status, and what it measured or
    why it failed."""

    id: str
    arm: str
    grid: dict[str, Any]
    seed: int
    control: bool = False
    status: str = FAILED  # "ok" once run_cell returned
    metrics: dict[str, float] = field(default_factory=dict)
    scores: CellScores | None = None
    allocation: CellAllocation | None = None
    curves: dict[str, list[list[float]]] | None = None  # name -> [[step, value], ...]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    error: CellError | None = None
    seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)  # package versions, cpu, gpu
    finished: str | None = None  # ISO 8601, UTC
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @property
    def ok(self) -> bool:
        return self.status == OK

    def with_result(self, result: dict[str, Any]) -> CellRecord:
        """This record with what a finished cell returned (scores, allocation, curves, metrics,
        timings), status ``ok``: read through :meth:`from_json`, so it has the file's shape."""
        return CellRecord.from_json({**self.to_json(), **result, "status": OK})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellRecord:
        """A cell file's content; what an older or restored record lacks takes its default, and
        one without a status is ``ok`` when it has metrics and no error."""
        missing = [k for k in ("id", "arm", "grid", "seed") if k not in data]
        if missing:
            raise StudyError(f"cell record '{data.get('id', '?')}' has no '{missing[0]}': it is not a "
                             "cell file layerif wrote; remove it and rerun the study to redo the cell.")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        scores, allocation, error = data.get("scores"), data.get("allocation"), data.get("error")
        status = data.get("status") or (FAILED if error or not data.get("metrics") else OK)
        return cls(
            id=str(data["id"]), arm=str(data["arm"]), grid=dict(data["grid"]), seed=int(data["seed"]),
            control=bool(data.get("control", False)), status=str(status),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
            scores=CellScores.from_json(scores) if scores else None,
            allocation=CellAllocation.from_json(allocation) if allocation else None,
            curves=None if data.get("curves") is None else {
                k: [[float(x), float(y)] for x, y in v] for k, v in data["curves"].items()},
            timings={k: float(v) for k, v in (data.get("timings") or {}).items()},
            error=CellError.from_json(error) if error else None,
            seconds=None if data.get("seconds") is None else float(data["seconds"]),
            versions=dict(data.get("versions") or {}),
            finished=data.get("finished"),
            extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """The cell file's content; fields the record does not have are left out."""
        out: dict[str, Any] = {"id": self.id, "arm": self.arm, "grid": self.grid, "seed": self.seed,
                               "control": self.control}
        if self.scores is not None:
            out["scores"] = {"values": self.scores.values, "higher_is_better": self.scores.higher_is_better,
                             "scorer": self.scores.scorer, "reused": self.scores.reused,
                             "details": self.scores.details}
        if self.allocation is not None:
            out["allocation"] = {"kind": self.allocation.kind, "allocator": self.allocation.allocator,
                                 "values": self.allocation.values}
            if self.allocation.select is not None:
                out["allocation"]["select"] = self.allocation.select
        if self.curves is not None:
            out["curves"] = self.curves
        if self.ok or self.metrics:
            out["metrics"] = self.metrics
        if self.timings:
            out["timings"] = self.timings
        out["status"] = self.status
        if self.error is not None:
            out["error"] = {"type": self.error.type, "message": self.error.message,
                            "user_error": self.error.user_error, "traceback": self.error.traceback}
        for key, value in (("seconds", self.seconds), ("versions", self.versions or None),
                           ("finished", self.finished)):
            if value is not None:
                out[key] = value
        return out | self.extra


def point_key(grid: dict[str, Any], axes: list[str]) -> tuple[str, ...]:
    """A grid point as a hashable key: each axis' value as JSON (values may be lists or mappings)."""
    return tuple(json.dumps(grid.get(a), sort_keys=True) for a in axes)


def point_label(grid: dict[str, Any], axes: list[str]) -> str:
    """A grid point as the report names it: ``sparsity=0.5`` (the axes' last parts when those are
    distinct, else their full paths); ``all`` for a study without a grid."""
    shorts = [a.split(".")[-1] for a in axes]
    names = shorts if len(set(shorts)) == len(shorts) else axes
    return ", ".join(f"{n}={grid[a]}" for n, a in zip(names, axes, strict=True)) or "all"


@dataclass
class StudyData:
    """A study directory read back: its config, cells and dense reference."""

    directory: Path
    study: StudyConfig
    base: dict[str, Any]
    cells: list[CellRecord]
    dense: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> list[CellRecord]:
        return [c for c in self.cells if c.ok]

    @property
    def failed(self) -> list[CellRecord]:
        return [c for c in self.cells if not c.ok]

    @property
    def axes(self) -> list[str]:
        return self.study.axes

    def points(self) -> list[tuple]:
        return [tuple(p[a] for a in self.axes) for p in self.study.points()]
