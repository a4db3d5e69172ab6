"""Errors a user can act on.

Every error the library raises for bad input is a :class:`LayerifError`; its message names the
problem and the fix in one line. The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LayerifError(Exception):
    """Base class of user-facing errors (bad config, bad data, bad plugin, numerical failure)."""


class ConfigError(LayerifError):
    """A configuration key or value is wrong."""


class BudgetError(ConfigError):
    """An allocator's options cannot meet the budget: some layer's value would leave its range (a
    sparsity outside [0, 1)). ``select`` skips a grid point that raises it, as a search would."""


class PluginError(LayerifError):
    """A plugin name is unknown, clashes, or the plugin failed to load."""


class ModelError(LayerifError):
    """A model or tokenizer cannot be loaded or does not fit the request."""


class DataError(LayerifError):
    """A dataset is missing, empty, or does not fit the template or the model."""


class NumericalError(LayerifError):
    """A loss or an intermediate quantity is NaN or infinite, or an iteration diverged."""


class DistributedError(LayerifError):
    """Another rank of a torch.distributed run stopped (died, was killed, or lost its connection)."""


class ArtifactError(LayerifError):
    """The run directory cannot be written or holds something unreadable."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
