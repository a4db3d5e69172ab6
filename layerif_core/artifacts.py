"""The run directory (architecture §7): atomic writes, safetensors and JSON only, a manifest, resume.

Every artifact that a later step may reuse records the fingerprint of its inputs; a rerun whose
inputs match skips the step and says so. Nothing is pickled.
"""

from __future__ import annotations

import errno
import importlib.metadata as md
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layerif_core.distributed import is_main
from layerif_core.errors import ArtifactError

log = logging.getLogger("layerif")

_VERSIONED = ("layerif", "torch", "transformers", "peft", "datasets", "safetensors", "pluggy",
              "pydantic", "lm_eval")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def _disk_error(path: Path, exc: OSError) -> ArtifactError:
    if exc.errno == errno.ENOSPC:
        return ArtifactError(f"disk full while writing '{path}'; free space and rerun: finished "
                             "artifacts are kept and reused.")
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return ArtifactError(f"cannot write '{path}' ({os.strerror(exc.errno)}); choose a writable "
                             "output_dir (--set output_dir=...).")
    return ArtifactError(f"cannot write '{path}': {exc}")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class RunDir:
    """A run's directory: ``manifest.json``, ``scores.json``, ``influence.safetensors``, ..."""

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.force = force
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise _disk_error(self.path, exc) from None
        self._manifest_path = self.path / "manifest.json"
        self.manifest: dict[str, Any] = self.read_json("manifest.json") or {}
        self.manifest.setdefault("steps", {})

    def file(self, rel: str) -> Path:
        return self.path / rel

    # --- JSON -------------------------------------------------------------------------------
    def write_json(self, rel: str, data: Any) -> Path:
        path = self.file(rel)
        if not is_main():  # under torch.distributed, rank 0 alone writes
            return path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        return path

    def read_json(self, rel: str) -> Any | None:
        path = self.file(rel)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ArtifactError(f"'{path}' is not valid JSON; delete it or rerun with --force.") from None

    # --- tensors ----------------------------------------------------------------------------
    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
        path = self.file(rel)
        if not is_main():
            return path
        data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(data, str(tmp), metadata=metadata or {})
        return path

    def read_tensors(self, rel: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        path = self.file(rel)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
        except Exception:
            raise ArtifactError(f"'{path}' is not a readable safetensors file; delete it or rerun "
                                "with --force.") from None

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

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save_manifest()

    def save_manifest(self) -> None:
        self.manifest["versions"] = package_versions()
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


def read_scores(path: str | Path) -> dict[str, Any]:
    """The ``{task: LayerScores}`` of a ``scores.json``, or of a run directory holding one."""
    from layerif_core.protocols import LayerScores

    path = Path(path)
    file = path / "scores.json" if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(f"'{path}' has no scores.json; pass a run directory made by "
                            "`layerif scores` or `layerif run`, or its scores.json.")
    try:
        data = json.loads(file.read_text())
        scores = {task: LayerScores.from_json(entry) for task, entry in data.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        raise ArtifactError(f"'{file}' is not a layerif scores.json; recompute it with "
                            "`layerif scores --force`.") from None
    if not scores:
        raise ArtifactError(f"'{file}' holds no task's scores; recompute it with `layerif scores`.")
    return scores
