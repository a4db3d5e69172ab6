"""Atomic writes: a file or a directory appears under its final name complete, or not at all.

Both write into a temporary sibling (same directory, so the final rename stays on one filesystem,
where POSIX ``rename`` is atomic) and rename it into place only when the ``with`` block succeeds; on
any failure the temporary is removed. A process killed mid-write leaves only a ``.<name>.*.tmp``
sibling, which no reader takes for an artifact (a run directory deletes them when it is next opened).
Disk full and permission errors become an :class:`ArtifactError` that names the path and the fix.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from layerif_core.errors import ArtifactError

log = logging.getLogger("layerif")

_SAFETENSORS_IO = {"StorageFull": errno.ENOSPC, "code: 28": errno.ENOSPC, "ReadOnlyFilesystem": errno.EROFS,
                   "PermissionDenied": errno.EACCES}


def disk_error(path: Path, exc: OSError) -> ArtifactError:
    """The one-line error for an OSError met while writing ``path``."""
    code = exc.errno
    if code == errno.ENOSPC:
        return ArtifactError(f"disk full while writing '{path}'; free space and rerun: finished "
                             "artifacts are kept and reused.")
    if code in (errno.EACCES, errno.EROFS, errno.EPERM):
        return ArtifactError(f"cannot write '{path}' ({os.strerror(code)}); choose a writable "
                             "output_dir (--set output_dir=...).")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return ArtifactError(f"cannot write '{path}': a part of that path is a file, not a directory; "
                             "choose another output_dir or name (--set output_dir=...).")
    return ArtifactError(f"cannot write '{path}' ({exc.strerror or exc}); choose a writable "
                         "output_dir (--set output_dir=...).")


def as_os_error(exc: Exception) -> OSError | None:
    """The OSError behind ``exc``: safetensors' writer reports I/O failures as its own error type."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    for needle, code in _SAFETENSORS_IO.items():
        if needle in text:
            return OSError(code, os.strerror(code))
    return None


@contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn an I/O failure inside the block (an OSError, or safetensors' own error for one) into the
    one-line :func:`disk_error` for ``path``; any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        os_error = as_os_error(exc)
        if os_error is None:
            raise
        raise disk_error(path, os_error) from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success (the temporary
    file is removed on any failure, so nothing half-written is ever left under the final name)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        with disk_errors(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


Existing = Literal["replace", "keep", "merge"]


@contextmanager
def atomic_dir(path: Path, existing: Existing = "replace") -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success, move what was written there
    to ``path``. On any failure the temporary directory is removed and ``path`` is left as it was.

    What happens to a ``path`` that already exists when the block ends:

    - ``"replace"``: the new directory takes its place (the old one is renamed aside, then deleted);
    - ``"keep"``: the existing directory wins and the new one is discarded (two processes writing the
      same cache entry at once: the second to finish keeps the first one's copy);
    - ``"merge"``: each file written replaces its namesake in ``path`` (one atomic rename per file);
      other files of ``path`` stay. For a directory that also holds other things (an adapter
      directory with its training checkpoints).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise disk_error(path, exc) from None
    try:
        with disk_errors(path):
            yield tmp
            _move_into_place(tmp, path, existing)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, path: Path, existing: Existing) -> None:
    if existing == "merge" and path.is_dir():
        for item in tmp.iterdir():
            if item.is_dir() and (path / item.name).is_dir():
                shutil.rmtree(path / item.name)
            os.replace(item, path / item.name)
        return
    try:
        os.replace(tmp, path)  # path absent, or an empty directory
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if existing == "keep":
        log.info("'%s' was written by another process meanwhile; keeping that copy", path)
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp"))
    os.replace(path, aside / path.name)
    os.replace(tmp, path)
    shutil.rmtree(aside, ignore_errors=True)
