"""Where the CLI's messages go: layerif's own to the console, third-party warnings to the run's log.

Warnings from torch, transformers, peft, datasets or lm-eval (deprecations, "could not find a config
file", ...) are not the user's to act on: they are kept in ``<run>/log.txt`` with everything layerif
logs, and shown on the console only with ``--debug``. Warnings the user can act on are layerif's
own, one line each on the ``layerif`` logger, naming the fix. Library users who never call
:func:`setup` keep Python's default logging.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

# torch is not listed: it keeps its own logger and handler (its warnings come through py.warnings)
THIRD_PARTY = ("py.warnings", "transformers", "peft", "datasets", "accelerate", "lm_eval", "lm-eval",
               "huggingface_hub", "httpx", "urllib3", "filelock", "matplotlib", "PIL")
_BUFFER_LIMIT = 2000
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class RunLog(logging.Handler):
    """Keeps records in memory until the run directory is known, then appends them to its log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.buffer: list[logging.LogRecord] = []
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.path is None:
            if len(self.buffer) < _BUFFER_LIMIT:
                self.buffer.append(record)
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(_FORMAT.format(record) + "\n")
        except OSError:
            self.handleError(record)

    def attach(self, path: Path) -> None:
        """Log to ``path`` from now on; the file exists from here even if nothing is logged."""
        self.path = path
        path.touch()
        pending, self.buffer = self.buffer, []
        for record in pending:
            self.emit(record)


_RUN_LOG: RunLog | None = None
_INSTALLED: list[logging.Handler] = []
_DEBUG = False


def setup(debug: bool, quiet: bool) -> None:
    """Console handler for layerif's messages; third-party loggers and Python warnings into the
    run log (and the console too with ``debug``)."""
    global _RUN_LOG, _DEBUG
    from rich.console import Console
    from rich.logging import RichHandler

    _DEBUG = debug
    _RUN_LOG = RunLog()
    console = RichHandler(console=Console(stderr=True), show_time=False, show_path=False)
    root = logging.getLogger()
    for handler in _INSTALLED:  # a second setup (tests invoke the CLI repeatedly) replaces ours only
        root.removeHandler(handler)
    _INSTALLED[:] = [console, _RUN_LOG]
    for handler in _INSTALLED:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    console.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(False)  # re-route even if an earlier command in this process did
    logging.captureWarnings(True)
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO if debug else logging.WARNING)
        lg.propagate = True
    console.addFilter(_not_third_party)


def _not_third_party(record: logging.LogRecord) -> bool:
    """The console shows layerif's records (and everything under ``--debug``)."""
    return _DEBUG or not any(record.name == n or record.name.startswith(n + ".") for n in THIRD_PARTY)


def quiet_library_handlers() -> None:
    """transformers and datasets install their own stderr handlers on import; route their records
    through ours instead, and drop transformers' weight-loading bar (layerif shows its own progress).
    A no-op for a library not imported yet, and when :func:`setup` was not called."""
    if _RUN_LOG is None:
        return
    importlib.import_module("transformers.utils.logging")  # the run loads a model next anyway
    for name in ("transformers", "datasets"):
        module = sys.modules.get(f"{name}.utils.logging")
        if module is not None and hasattr(module, "disable_default_handler"):
            module.disable_default_handler()
            module.enable_propagation()
            if name == "transformers" and not _DEBUG:
                module.disable_progress_bar()


def attach_run_log(run_dir: Path) -> None:
    """Append the log of this process to ``run_dir/log.txt`` from now on (with what was buffered)."""
    if _RUN_LOG is None:
        return
    quiet_library_handlers()
    _RUN_LOG.attach(run_dir / "log.txt")
