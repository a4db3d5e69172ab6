"""Cells of a study: arms × grid points × seeds, each a validated run config, each with a stable id.

Override and grid paths are checked against the run config's schema (a path into a component's
``options`` is checked by that component), and every cell's config is validated before any model
loads, so a typo or a value of the wrong type fails in a second with one line naming the fix.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from layerif_core.config import RunConfig, parse_config
from layerif_core.errors import LayerifError, closest
from layerif_core.study.config import StudyConfig, StudyError


@dataclass
class Cell:
    """One run of the study: an arm, a grid point (axis -> value) and a seed."""

    arm: str
    point: dict[str, Any]
    seed: int
    config: RunConfig | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return json.dumps([self.arm, self.point, self.seed], sort_keys=True)

    @property
    def id(self) -> str:
        """Readable and unique: ``<arm>-<grid values>-s<seed>-<hash>``."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:8]
        parts = [_slug(self.arm)] + [_slug(str(v)) for v in self.point.values()] + [f"s{self.seed}"]
        return "-".join(p for p in parts if p)[:80] + f"-{digest}"

    def in_shard(self, k: int, n: int) -> bool:
        """Whether the cell belongs to shard ``k`` of ``n`` (its id's hash modulo n)."""
        return int(hashlib.sha256(self.id.encode()).hexdigest(), 16) % n == k

    def describe(self) -> str:
        grid = ", ".join(f"{k}={v}" for k, v in self.point.items())
        return f"arm '{self.arm}'" + (f", {grid}" if grid else "") + f", seed {self.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:24]


# --- paths -------------------------------------------------------------------------------------

def _unwrap(ann: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def schema_paths(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted path of the run config (list items as ``.0``)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        ann = _unwrap(info.annotation)
        if typing.get_origin(ann) is list:
            ann, path = _unwrap(typing.get_args(ann)[0]), f"{path}.0"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += schema_paths(ann, f"{path}.")
    return out


def check_path(path: str) -> None:
    """``path`` names a key of the run config (anything below a free mapping such as ``options``
    is checked later by its component)."""
    node: Any = RunConfig
    for i, part in enumerate(path.split(".")):
        if node is None:  # below a free mapping (component options)
            return
        if isinstance(node, type) and issubclass(node, BaseModel):
            info = node.model_fields.get(part)
            if info is None:
                parts = path.split(".")
                where = ".".join(parts[:i])
                match = difflib.get_close_matches(part, list(node.model_fields), n=1, cutoff=0.5)
                hint = (f" (did you mean '{'.'.join([*parts[:i], match[0], *parts[i + 1:]])}'?)"
                        if match else closest(path, schema_paths()))
                raise StudyError(f"override path '{path}' does not exist{hint}; valid keys "
                                 f"{'under ' + repr(where) if where else 'at the top'}: "
                                 f"{', '.join(node.model_fields)}.")
            node = _unwrap(info.annotation)
            if typing.get_origin(node) is dict or node is Any:
                node = None
        elif typing.get_origin(node) is list:
            if not part.isdigit():
                raise StudyError(f"override path '{path}': '{part}' must be a list index (e.g. 0).")
            node = _unwrap(typing.get_args(node)[0])
        else:
            raise StudyError(f"override path '{path}': '{'.'.join(path.split('.')[:i])}' is a "
                             "value, not a section; shorten the path.")


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set the dotted ``path`` of ``data`` to ``value``, creating sections on the way."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise StudyError(f"override path '{path}': the base config's list has no item {idx}.")
            if last:
                node[idx] = copy.deepcopy(value)
            else:
                node = node[idx]
        else:
            if last:
                node[part] = copy.deepcopy(value)
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]


# --- cells -------------------------------------------------------------------------------------

def cell_config(base: dict[str, Any], study: StudyConfig, cell: Cell, output_dir: str) -> RunConfig:
    """The run config of ``cell``: base, then the arm's overrides, the grid point, the seed."""
    arm = next(a for a in study.arms if a.label == cell.arm)
    data = copy.deepcopy(base)
    for path, value in list(arm.overrides.items()) + list(cell.point.items()):
        set_path(data, path, value)
    data.update(seed=cell.seed, name=cell.id, output_dir=output_dir)
    return parse_config(data, source=cell.describe())


def build_cells(study: StudyConfig, base: dict[str, Any], output_dir: str = "runs") -> list[Cell]:
    """Every cell with its validated run config (components and options checked too)."""
    from layerif_core.registry import check_components

    for arm in study.arms:
        for path in arm.overrides:
            check_path(path)
    for path in study.axes:
        check_path(path)
    cells = [Cell(arm.label, point, seed) for arm in study.arms for point in study.points()
             for seed in study.seeds]
    for cell in cells:
        try:
            cell.config = cell_config(base, study, cell, output_dir)
            check_components(cell.config)
            cell.config.application_task("layerif study")  # a cell applies one task's allocation
        except StudyError:
            raise
        except LayerifError as exc:
            message = str(exc)
            prefix = f"{cell.describe()}: "
            raise StudyError(message if message.startswith(prefix) else prefix + message) from None
    return cells


def select_cells(cells: list[Cell], arms: list[str] | None = None, seeds: list[int] | None = None,
                 points: list[str] | None = None) -> list[Cell]:
    """The cells of the given arms (label, or the label as cell ids spell it), seeds and grid values
    (``AXIS=VALUE``, the axis by its path or its last part; values of one axis are alternatives);
    all of them for ``None``. One a study does not have is one line naming those it has."""
    if arms:
        labels = list(dict.fromkeys(c.arm for c in cells))
        known = {name: label for label in labels for name in (label, _slug(label))}
        for arm in arms:
            if arm not in known:
                raise StudyError(f"--arm '{arm}' is not an arm of this study{closest(arm, list(known))}; "
                                 f"its arms: {', '.join(repr(a) for a in labels)}.")
        wanted = {known[a] for a in arms}
        cells = [c for c in cells if c.arm in wanted]
    if seeds:
        have = sorted({c.seed for c in cells})
        missing = [s for s in seeds if s not in have]
        if missing:
            raise StudyError(f"--seed {missing[0]} is not a seed of this study; its seeds: "
                             f"{', '.join(map(str, have))}.")
        cells = [c for c in cells if c.seed in seeds]
    for axis, values in _grid_filter(cells, points or []).items():
        cells = [c for c in cells if c.point[axis] in values]
    return cells


def _grid_filter(cells: list[Cell], points: list[str]) -> dict[str, list[Any]]:
    """``['sparsity=0.5', ...]`` -> ``{'allocation.options.sparsity': [0.5], ...}``, checked."""
    import yaml

    axes = list(cells[0].point) if cells else []
    names = {name: axis for axis in axes for name in (axis, axis.split(".")[-1])}
    out: dict[str, list[Any]] = {}
    for text in points:
        name, sep, raw = text.partition("=")
        if not sep or name.strip() not in names:
            hint = closest(name.strip(), list(names)) if sep else ""
            raise StudyError(f"--grid '{text}' must be AXIS=VALUE with an axis of this study{hint}; "
                             f"its axes: {', '.join(axes) or '(none)'}.")
        axis = names[name.strip()]
        value = yaml.safe_load(raw)
        have = list(dict.fromkeys(c.point[axis] for c in cells))
        if value not in have:
            raise StudyError(f"--grid {axis}={raw} is not a value of this study's grid; its values: "
                             f"{', '.join(map(str, have))}.")
        out.setdefault(axis, []).append(value)
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``'k/N'`` -> ``(k, N)`` with ``0 <= k < N``."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise StudyError(f"--shard '{text}' must look like k/N (e.g. 0/4: the first of 4 shards).")
    k, n = int(match[1]), int(match[2])
    if n < 1 or not 0 <= k < n:
        raise StudyError(f"--shard {k}/{n} is out of range; k goes from 0 to N-1 (here 0 to "
                         f"{max(n - 1, 0)}).")
    return k, n
