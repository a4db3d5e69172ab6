"""The built-in plugins, registered through the same hooks as third-party ones.

Every module of the packages below that defines a ``layerif_register_*`` hook function is a
built-in plugin; adding a file with its own ``@hookimpl`` is all it takes to add a component.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from layerif_core.hookspecs import hookimpl

_PACKAGES = ("layerif_core.estimators", "layerif_core.scorers", "layerif_core.allocators")
_MODULES = ("layerif_core.aggregators",)


def _modules() -> list[ModuleType]:
    found = [importlib.import_module(m) for m in _MODULES]
    for pkg_name in _PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ModuleNotFoundError:
            continue
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            found.append(importlib.import_module(f"{pkg_name}.{info.name}"))
    return found


def _each(hook: str, **kwargs) -> None:
    for module in _modules():
        impl = getattr(module, hook, None)
        if impl is not None:
            impl(**kwargs)


@hookimpl
def layerif_register_estimators(registry) -> None:
    _each("layerif_register_estimators", registry=registry)


@hookimpl
def layerif_register_aggregators(registry) -> None:
    _each("layerif_register_aggregators", registry=registry)


@hookimpl
def layerif_register_scorers(registry) -> None:
    _each("layerif_register_scorers", registry=registry)


@hookimpl
def layerif_register_allocators(registry) -> None:
    _each("layerif_register_allocators", registry=registry)


@hookimpl
def layerif_register_commands(app) -> None:
    _each("layerif_register_commands", app=app)
