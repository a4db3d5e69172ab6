"""The run directory's lock: one writing process at a time (docs/reliability.md, promise 4).

``<run>/.lock`` is an operating-system lock (``filelock.FileLock``, ``fcntl.flock`` on Linux and
macOS) that the writing process holds for as long as it runs: the kernel frees it when the process
ends, however it ends (exit, crash, SIGKILL), so a dead writer's lock is free without any check of
process ids. The empty ``.lock`` file stays after release (waiters must share its inode).

``<run>/.lock.json`` says who holds the lock, ``{"pid", "host", "since", "command"}``: the holder
writes it once it has the lock and removes it when it releases it, so a second run is refused with
the holder's host, pid and start time. A record left by a killed writer is taken over with a warning;
a record written on another host is never taken over, even when the lock is free here: on a network
filesystem mounted without lock support (``nolock``, ``local_lock``) another host's lock is invisible,
so the record is the only sign that a run there may still be writing.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from layerif_core.atomic import atomic_path
from layerif_core.errors import ArtifactError

log = logging.getLogger("layerif")

LOCK = ".lock"  # the OS lock
HOLDER = ".lock.json"  # who holds it
_HELD: dict[Path, FileLock] = {}  # lock files this process holds (released at exit)


class RunInUse(ArtifactError):
    """A live process on this host holds the run directory's lock."""


def holder_record() -> dict[str, Any]:
    """What ``.lock.json`` says of this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}


def read_holder(run_path: Path) -> dict[str, Any] | None:
    """The record of ``run_path``'s lock holder; None when there is none, ``{}`` when it is garbled
    (a writer killed in an older version's non-atomic write, or an edited file)."""
    try:
        held = json.loads((run_path / HOLDER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def acquire_lock(run_path: Path) -> Path:
    """Take ``run_path/.lock`` for this process (re-entrant within one process).

    A live process holding it is an :class:`ArtifactError` naming its host, pid and start time; a lock
    whose process ended (killed, crashed) is free, and its leftover record is taken over with a
    warning; a record from another host is refused (see the module docstring).
    """
    lock_path = run_path / LOCK
    key = Path(os.path.abspath(lock_path))
    if key in _HELD:
        return lock_path
    lock = FileLock(str(lock_path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunInUse(_in_use(run_path, read_holder(run_path))) from None
    except OSError as exc:
        raise ArtifactError(f"cannot lock run directory '{run_path}' ({exc.strerror or exc}); choose a "
                            "writable output_dir (--set output_dir=...).") from None
    try:
        _take_over(run_path, read_holder(run_path))
        with atomic_path(run_path / HOLDER) as tmp:
            tmp.write_text(json.dumps(holder_record()))
    except BaseException:
        lock.release(force=True)
        raise
    _HELD[key] = lock
    return lock_path


def _in_use(run_path: Path, held: dict[str, Any] | None) -> str:
    if not held:
        who = "another process (starting: it has not yet written its record)"
    else:
        who = (f"process {held.get('pid', '?')} on {held.get('host', '?')} (since {held.get('since', '?')}: "
               f"{held.get('command', '?')})")
    return (f"run directory '{run_path}' is in use by {who}; wait for it to finish, or choose another "
            "name (--set name=...).")


def _take_over(run_path: Path, held: dict[str, Any] | None) -> None:
    """With the OS lock in hand: refuse another host's record, warn about a dead writer's."""
    if held is None or (held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()):
        return
    host = held.get("host")
    if host is not None and host != socket.gethostname():
        raise ArtifactError(
            f"run directory '{run_path}' is locked by process {held.get('pid', '?')} on host {host}; if "
            f"that run is over, delete '{run_path / HOLDER}', else choose another name (--set name=...).")
    log.warning("taking over run directory '%s': its lock belongs to process %s, which is no longer "
                "running (killed?); finished artifacts are verified and reused.",
                run_path, held.get("pid", "?"))


def wait_for_lock(run_path: Path) -> None:
    """Block until no process holds ``run_path``'s lock (another may take it right after)."""
    if not (run_path / LOCK).is_file():
        return
    lock = FileLock(str(run_path / LOCK), timeout=-1, thread_local=False)
    lock.acquire()
    lock.release(force=True)


@contextmanager
def holding_lock(run_path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold ``run_path``'s lock for the block, first waiting (``on_wait()`` once per wait) for any
    other process of this host that holds it."""
    while True:
        try:
            lock = acquire_lock(run_path)
            break
        except RunInUse:
            on_wait()
            log.info("%s is in use by another process; waiting for it", run_path)
            wait_for_lock(run_path)
    try:
        yield
    finally:
        release_lock(lock)


def release_lock(lock_path: Path) -> None:
    """Release ``lock_path`` (a run directory's ``.lock``) and remove its record, if this process
    holds it."""
    lock = _HELD.pop(Path(os.path.abspath(lock_path)), None)
    if lock is None:
        return
    holder = lock_path.parent / HOLDER
    held = read_holder(lock_path.parent)
    if held and held.get("pid") == os.getpid():
        holder.unlink(missing_ok=True)
    lock.release(force=True)


def release_all_locks() -> None:
    """Release every run-directory lock this process holds (at exit, and when a CLI command ends)."""
    for key in list(_HELD):
        release_lock(key)


atexit.register(release_all_locks)
