"""The run directory (architecture §7): atomic writes, safetensors and JSON only, a manifest, resume.

Every artifact that a later step may reuse records the fingerprint of its inputs; a rerun whose
inputs match skips the step and says so. Nothing is pickled.

Reliability rules (docs/reliability.md):

- one process writes a run directory at a time: ``.lock`` is an OS lock that dies with its process,
  ``.lock.json`` names the writer (:mod:`layerif_core.runlock`); a second run is refused naming that
  process, and a dead writer's record is taken over with a warning;
- files and directories are written atomically (:mod:`layerif_core.atomic`);
- every file of the run directory has its SHA-256 in the manifest (``artifacts``); a cache file
  (factors, influences, pruning or training state) that is truncated, garbled or does not match its
  recorded checksum is derived data: it is deleted with a warning and recomputed, never trusted.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layerif_core.atomic import atomic_dir, atomic_path, disk_error
from layerif_core.distributed import is_main
from layerif_core.errors import ArtifactError
from layerif_core.runlock import HOLDER, LOCK, acquire_lock, release_all_locks, release_lock

__all__ = ["HOLDER", "LOCK", "RunDir", "acquire_lock", "atomic_dir", "atomic_path", "discard_partial_all",
           "file_sha256", "hardware", "package_versions", "read_scores", "release_all_locks",
           "release_lock", "scores_input", "verify_run_dir"]

log = logging.getLogger("layerif")

_VERSIONED = ("layerif", "torch", "transformers", "peft", "datasets", "safetensors", "pluggy",
              "pydantic", "lm_eval")


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    return tuple(_package_versions().items())


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on, and the processor it ran on
    (read once per process): a CPU's vector width changes how float sums round, and a pruned
    model's perplexity follows its masks' near-ties (see :func:`hardware`)."""
    return dict(_versions())


def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out | hardware()


def hardware() -> dict[str, str]:
    """The CPU's model name and the vector instruction set torch dispatches to, and the first
    GPU's name where one is visible."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_OPEN: weakref.WeakSet[RunDir] = weakref.WeakSet()  # run directories this process has open


def discard_partial_all() -> list[str]:
    """:meth:`RunDir.discard_partial` of every run directory this process has open (after a crash)."""
    removed: list[str] = []
    for run_dir in list(_OPEN):
        removed += run_dir.discard_partial()
    return removed


def _is_scratch(name: str) -> bool:
    return name.endswith(".tmp") or name.startswith(".tmp-") or name in (LOCK, HOLDER, ".write-test")


class RunDir:
    """A run's directory: ``manifest.json``, ``scores.json``, ``influence.safetensors``, ...

    Opening it takes its lock (one writing process at a time). ``manifest["artifacts"]`` maps every
    file below it to its SHA-256 and size: files written here are hashed as they are written; other
    files (a saved model, plots) are hashed when the manifest is saved.
    """

    def __init__(self, path: str | Path, force: bool = False, lock: bool = True):
        self.path = Path(path)
        self.force = force
        try:
            if self.path.exists() and not self.path.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".tmp-write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise disk_error(self.path, exc) from None
        # under torch.distributed (or a launcher that set RANK) rank 0 alone writes, so it alone locks
        main = is_main() and os.environ.get("RANK", "0") == "0"
        self.lock = acquire_lock(self.path) if lock and main else None
        if self.lock is not None:  # temporary files of a killed writer: never renamed, never trusted
            for stale in [p for p in self.path.rglob("*") if p.name.endswith(".tmp") and p.is_dir()]:
                shutil.rmtree(stale, ignore_errors=True)  # of atomic_dir
            for stale in [p for p in self.path.rglob("*") if p.is_file() and (
                    p.name.endswith(".tmp") or p.name.startswith(".tmp-write-test-"))]:
                stale.unlink(missing_ok=True)
        self._manifest_path = self.path / "manifest.json"
        self.manifest: dict[str, Any] = {}
        self.manifest = self.read_json("manifest.json") or {}
        if not isinstance(self.manifest, dict):
            self.manifest = {}
        self.manifest.setdefault("steps", {})
        self.manifest.setdefault("artifacts", {})
        self._mark = self._present()  # files present when the last step finished
        _OPEN.add(self)

    def file(self, rel: str) -> Path:
        return self.path / rel

    def close(self) -> None:
        """Release the run directory's lock (also done when the process exits)."""
        if self.lock is not None:
            release_lock(self.lock)

    def _own_files(self) -> list[Path]:
        """Files below this directory, except those of run directories nested in it (a task's
        ``<run>/<task>/`` has its own manifest, checksums and lock)."""
        nested = [m.parent for m in self.path.rglob("manifest.json") if m.parent != self.path]
        return [p for p in sorted(self.path.rglob("*"))
                if p.is_file() and not any(n in p.parents for n in nested)]

    def _present(self) -> set[str]:
        return {p.relative_to(self.path).as_posix() for p in self._own_files() if not _is_scratch(p.name)}

    def discard_partial(self) -> list[str]:
        """After a failure: remove temporary files, and files that appeared since the last finished
        step without being written (atomically) through this class, e.g. what a plugin that crashed
        half-way had begun to write. Finished artifacts stay. Returns the removed paths."""
        arts = self.manifest.get("artifacts", {})
        removed = []
        for path in self._own_files():
            if path.name in (LOCK, HOLDER) or path == self._manifest_path:
                continue
            rel = path.relative_to(self.path).as_posix()
            if _is_scratch(path.name) or (rel not in self._mark and arts.get(rel, {"external": True})
                                          .get("external")):
                path.unlink(missing_ok=True)
                arts.pop(rel, None)
                removed.append(rel)
        if removed:
            log.warning("removed what the failed step left in '%s': %s", self.path, ", ".join(removed))
            self.save_manifest()
        return removed

    # --- checksums --------------------------------------------------------------------------
    def _record_checksum(self, rel: str, path: Path) -> None:
        if rel == "manifest.json":
            return
        st = path.stat()
        self.manifest.setdefault("artifacts", {})[rel] = {
            "sha256": file_sha256(path), "bytes": st.st_size}

    def _corrupt(self, rel: str, why: str) -> None:
        """Delete the cache file ``rel`` (derived data) with a warning; the caller recomputes it."""
        path = self.file(rel)
        log.warning("'%s' %s; deleted it, it will be recomputed.", path, why)
        path.unlink(missing_ok=True)
        self.manifest.get("artifacts", {}).pop(rel, None)

    def verify(self, rel: str) -> bool:
        """Whether ``rel`` exists and holds the bytes the manifest recorded for it; a file that does
        not is deleted with a warning (callers recompute it)."""
        return self.file(rel).is_file() and self._checksum_ok(rel)

    def discard(self, rel: str, why: str) -> None:
        """Delete the damaged cache file ``rel`` with a warning saying ``why`` (it is recomputed)."""
        self._corrupt(rel, why)

    def _checksum_ok(self, rel: str) -> bool:
        entry = self.manifest.get("artifacts", {}).get(rel)
        if not entry or entry.get("external"):
            return True
        if file_sha256(self.file(rel)) != entry.get("sha256"):
            self._corrupt(rel, "does not match the checksum in manifest.json (changed or damaged)")
            return False
        return True

    def record_files(self) -> None:
        """Hash every file not written through this class (a saved model, plots) into the manifest,
        again when it changed; files written here keep the checksum of what was written."""
        arts = self.manifest.setdefault("artifacts", {})
        for path in self._own_files():
            if _is_scratch(path.name) or path == self._manifest_path:
                continue
            rel = path.relative_to(self.path).as_posix()
            entry = arts.get(rel)
            st = path.stat()
            if entry is not None and not (entry.get("external") and (
                    entry.get("bytes") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns)):
                continue
            arts[rel] = {"sha256": file_sha256(path), "bytes": st.st_size,
                         "mtime_ns": st.st_mtime_ns, "external": True}
        for rel in [r for r in arts if not self.file(r).is_file()]:
            del arts[rel]

    # --- JSON -------------------------------------------------------------------------------
    def write_json(self, rel: str, data: Any) -> Path:
        path = self.file(rel)
        if not is_main():  # under torch.distributed, rank 0 alone writes
            return path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
            if rel != "manifest.json":
                self._record_checksum(rel, tmp)
        if rel != "manifest.json":
            self.save_manifest()
        return path

    def read_json(self, rel: str) -> Any | None:
        """``rel`` parsed, or None when it is missing, damaged (deleted with a warning) or does not
        match its recorded checksum."""
        path = self.file(rel)
        if not path.is_file() or not self._checksum_ok(rel):
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._corrupt(rel, "is not valid JSON (truncated or damaged)")
            return None

    # --- tensors ----------------------------------------------------------------------------
    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
        path = self.file(rel)
        if not is_main():
            return path
        data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(data, str(tmp), metadata=metadata or {})
            self._record_checksum(rel, tmp)
        self.save_manifest()
        return path

    def read_tensors(self, rel: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """``(tensors, metadata)`` of ``rel``, or None when it is missing, or truncated, garbled or
        not the file the manifest recorded: such a file is deleted with a warning, so that the
        caller recomputes it."""
        path = self.file(rel)
        if not path.is_file() or not self._checksum_ok(rel):
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
        except Exception:
            self._corrupt(rel, "is not a readable safetensors file (truncated or damaged)")
            return None

    def cached_tensors(self, rel: str, fingerprint: str, compute: Callable[[], dict[str, torch.Tensor]],
                       step: str | None = None) -> dict[str, torch.Tensor]:
        """Load ``rel`` if it was made from inputs with ``fingerprint``, else compute and save it."""
        step = step or rel
        found = None if self.force else self.read_tensors(rel)
        if found is not None and found[1].get("fingerprint") == fingerprint:
            self.record_step(step, fingerprint, reused=True)
            return found[0]
        start = time.perf_counter()
        tensors = compute()
        self.write_tensors(rel, tensors, {"fingerprint": fingerprint})
        self.record_step(step, fingerprint, reused=False, seconds=time.perf_counter() - start)
        return tensors

    # --- manifest ---------------------------------------------------------------------------
    def record_step(self, step: str, fingerprint: str, reused: bool, seconds: float | None = None,
                    **extra: Any) -> None:
        """Record a step's fingerprint and timing in the manifest (and say when it was reused)."""
        entry = self.manifest["steps"].get(step, {}) if reused else {}
        entry.update({"fingerprint": fingerprint, "reused": reused, **extra})
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        self.manifest["steps"][step] = entry
        if reused:
            log.info("reusing %s (inputs unchanged; --force recomputes)", step)
        self.save_manifest()
        self._mark = self._present()

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save_manifest()

    def save_manifest(self) -> None:
        self.manifest["versions"] = package_versions()
        if is_main():
            self.record_files()
        self.write_json("manifest.json", self.manifest)

    def cached_entry(self, rel: str, key: str, fingerprint: str,
                     compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One tensor ``key`` of the multi-entry file ``rel`` (e.g. one task's influence matrix),
        reused when its recorded fingerprint matches, else computed and merged into the file."""
        step = f"{rel}:{key}"
        found = self.read_tensors(rel)
        tensors, meta = found if found is not None else ({}, {})
        if not self.force and key in tensors and meta.get(f"fingerprint:{key}") == fingerprint:
            self.record_step(step, fingerprint, reused=True)
            return tensors[key]
        start = time.perf_counter()
        value = compute()
        tensors[key] = value
        meta[f"fingerprint:{key}"] = fingerprint
        self.write_tensors(rel, tensors, meta)
        self.record_step(step, fingerprint, reused=False, seconds=time.perf_counter() - start)
        return value


def read_scores(path: str | Path, n_layers: int | None = None) -> dict[str, Any]:
    """The ``{task: LayerScores}`` of a ``scores.json``, or of a run directory holding one.

    The values must be finite (and, given ``n_layers``, one per layer). A run that uses them records
    :func:`scores_input` in its manifest, so that it says which bytes it used."""
    from layerif_core.results import LayerScores

    path = Path(path)
    file = path / "scores.json" if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(f"'{path}' has no scores.json; pass a run directory made by "
                            "`layerif scores` or `layerif run`, or its scores.json.")
    try:
        data = json.loads(file.read_text())
        scores = {task: LayerScores.from_json(entry) for task, entry in data.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError):
        raise ArtifactError(f"'{file}' is not a layerif scores.json; recompute it with "
                            "`layerif scores --force`.") from None
    if not scores:
        raise ArtifactError(f"'{file}' holds no task's scores; recompute it with `layerif scores`.")
    for task, s in scores.items():
        if s.values.dim() != 1 or s.values.numel() == 0:
            raise ArtifactError(f"scores of task '{task}' in '{file}' are not a list of one number "
                                "per layer; recompute them with `layerif scores`.")
        bad = (~torch.isfinite(s.values)).nonzero().flatten().tolist()
        if bad:
            raise ArtifactError(f"scores of task '{task}' in '{file}' are not finite at layer(s) "
                                f"{bad}; fix or recompute them with `layerif scores`.")
        if n_layers is not None and s.values.numel() != n_layers:
            raise ArtifactError(f"scores of task '{task}' in '{file}' have {s.values.numel()} layers "
                                f"but the model has {n_layers}; use scores computed for this model "
                                "(these come from another model).")
    return scores


def scores_input(path: str | Path) -> dict[str, str]:
    """``{"file", "sha256"}`` of the ``scores.json`` that :func:`read_scores` reads at ``path``: what a
    run given ``--scores`` records in its manifest (``scores_input``)."""
    path = Path(path)
    file = path / "scores.json" if path.is_dir() else path
    return {"file": str(file.resolve()), "sha256": file_sha256(file)}


def verify_run_dir(path: str | Path) -> list[str]:
    """Files of the run directory ``path`` whose bytes differ from the checksum its manifest
    records (empty when every artifact is what was written)."""
    path = Path(path)
    try:
        arts = json.loads((path / "manifest.json").read_text()).get("artifacts", {})
    except (OSError, ValueError):
        return []
    return [rel for rel, entry in arts.items()
            if not entry.get("external") and (not (path / rel).is_file()
                                              or file_sha256(path / rel) != entry.get("sha256"))]
