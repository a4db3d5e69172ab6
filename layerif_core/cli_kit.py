"""What every ``layerif`` command shares: the error console, the global flags, the error guard and
the common option types. The bottom of the command tier (architecture §10): ``cli.py``, the study
command and the plugins' command modules import it, and it imports none of them.

No torch here: the CLI lists its commands (``layerif --help``) without importing it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from layerif_core.errors import LayerifError

console = Console(stderr=True)
STATE = {"debug": False, "quiet": False}  # set by the `layerif` callback from --debug and --quiet

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML, TOML or JSON).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a config key: path.to.key=value (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute finished artifacts.")]


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body, turning errors into one line and the documented exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerifError as exc:
            if STATE["debug"]:
                raise
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:  # a config changed after parsing (e.g. by a command)
            if STATE["debug"]:
                raise
            from layerif_core.config import RunConfig, describe_validation_error

            console.print(f"[bold red]error:[/] {describe_validation_error(exc, RunConfig)}",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted; finished artifacts are kept and reused by a rerun.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if STATE["debug"]:
                raise
            from layerif_core.artifacts import discard_partial_all

            discard_partial_all()  # what the failed step began to write is not a finished artifact
            plugin = _plugin_in_traceback(exc)
            if plugin is not None:
                console.print(f"[bold red]error:[/] plugin '{plugin[0]}' failed (in {plugin[1]}): "
                              f"{type(exc).__name__}: {exc}; what it left in the run directory was "
                              "removed; fix or uninstall the plugin, or configure another component.",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                          "(rerun with --debug for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:  # the command is over: its run directories are free for the next one
            artifacts = sys.modules.get("layerif_core.artifacts")
            if artifacts is not None:
                artifacts.release_all_locks()

    return wrapper


def _plugin_in_traceback(exc: BaseException) -> tuple[str, str] | None:
    """``(distribution, function)`` of the innermost frame of ``exc`` that belongs to a third-party
    ``layerif`` plugin (an entry point of another distribution), or None."""
    import importlib.metadata as md
    import traceback

    from layerif_core.registry import FIRST_PARTY

    owners = md.packages_distributions()
    plugin_dists = {ep.dist.name for ep in md.entry_points(group="layerif") if ep.dist is not None}
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        for dist in owners.get(module.split(".")[0], []):
            if dist in plugin_dists and dist not in FIRST_PARTY:
                found = (dist, f"{module}.{frame.f_code.co_name}")
    return found
