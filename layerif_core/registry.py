"""Plugin loading, name lookup and listing.

Built-ins and third-party plugins go through the same pluggy hooks (see :mod:`hookspecs`). A plugin
whose import fails, whose hook raises, or that registers a name already taken is reported with its
distribution's name and skipped; the others keep working.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from layerif_core import hookspecs
from layerif_core.errors import ConfigError, PluginError, closest

log = logging.getLogger(__name__)

KINDS = ("estimator", "aggregator", "scorer", "allocator", "application", "evaluator")
_HOOKS = {
    "estimator": "layerif_register_estimators",
    "aggregator": "layerif_register_aggregators",
    "scorer": "layerif_register_scorers",
    "allocator": "layerif_register_allocators",
    "application": "layerif_register_applications",
    "evaluator": "layerif_register_evaluators",
}


@dataclass(frozen=True)
class Component:
    """One registered name: its kind, factory, options class and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[BaseModel] | None
    provider: str
    version: str
    help: str = ""

    def options(self, raw: dict[str, Any] | BaseModel | None) -> BaseModel | None:
        """Validate ``raw`` options against this component's config class."""
        if isinstance(raw, BaseModel):
            return raw
        raw = dict(raw or {})
        if self.config is None:
            if raw:
                raise ConfigError(
                    f"{self.kind} '{self.name}' takes no options but got {sorted(raw)}; remove them."
                )
            return None
        try:
            return self.config(**raw)
        except ValidationError as exc:
            raise ConfigError(_options_message(self, exc)) from None

    def build(self, raw: dict[str, Any] | BaseModel | None = None) -> Any:
        """Instantiate the component with validated options."""
        opts = self.options(raw)
        return self.factory(opts) if self.config is not None else self.factory(None)


def _options_message(comp: Component, exc: ValidationError) -> str:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo first
    key = ".".join(str(p) for p in err["loc"])
    fields = list(comp.config.model_fields) if comp.config else []
    if err["type"] == "extra_forbidden":
        return (
            f"{comp.kind} '{comp.name}' has no option '{key}'{closest(key, fields)}; "
            f"its options are: {', '.join(fields) or 'none'}."
        )
    return f"{comp.kind} '{comp.name}' option '{key}': {err['msg']}."


@dataclass
class LoadProblem:
    """A plugin that could not be loaded or registered, kept for ``layerif plugins``."""

    provider: str
    message: str


@dataclass
class Registry:
    """Named factories of every kind, filled by the plugin hooks."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    problems: list[LoadProblem] = field(default_factory=list)
    _provider: tuple[str, str] = ("layerif", "0")

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        config: type[BaseModel] | None = None,
        help: str = "",
    ) -> None:
        """Register ``factory`` under ``kind``/``name``; ``config`` validates its options."""
        if kind not in self.components:
            raise PluginError(f"unknown component kind '{kind}'; use one of {', '.join(KINDS)}.")
        taken = self.components[kind].get(name)
        provider, version = self._provider
        if taken is not None:
            raise PluginError(
                f"{kind} name '{name}' from '{provider}' is already registered by "
                f"'{taken.provider}'; rename it in one of the two plugins."
            )
        doc = help or (getattr(factory, "__doc__", "") or "").strip().split("\n")[0]
        self.components[kind][name] = Component(kind, name, factory, config, provider, version, doc)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``, or an error listing the registered names."""
        known = self.components[kind]
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise PluginError(
                f"unknown {kind} '{name}'{closest(name, known)}; registered {kind}s: {names}."
            )
        return known[name]

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Instantiate component ``name`` of ``kind`` with ``options``."""
        return self.get(kind, name).build(options)

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in sorted(self.components[kind].values(), key=_by_name)]


def _by_name(c: Component) -> str:
    return c.name


def _call_plugin(registry: Registry, pm: pluggy.PluginManager, plugin: object, provider: str,
                 version: str, app: Any | None) -> None:
    """Run every registration hook of one plugin, reverting what it added if it fails midway."""
    registry._provider = (provider, version)
    before = {k: dict(v) for k, v in registry.components.items()}
    n_commands = len(app.registered_commands) if app is not None else 0
    try:
        for hook in _HOOKS.values():
            impl = getattr(plugin, hook, None)
            if impl is not None:
                impl(registry=registry)
        impl = getattr(plugin, "layerif_register_commands", None)
        if impl is not None and app is not None:
            impl(app=app)
            _check_commands(app)
    except Exception as exc:  # a broken third-party plugin must not stop the others
        registry.components = before
        if app is not None:
            del app.registered_commands[n_commands:]
        msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        registry.problems.append(LoadProblem(provider, msg))
        log.warning("plugin '%s' skipped: %s", provider, msg)
    finally:
        registry._provider = ("layerif", "0")


def _check_commands(app: Any) -> None:
    """Build the click commands now, so that a plugin's malformed command fails here, where it is
    isolated, rather than when the CLI starts."""
    import typer.main

    typer.main.get_command(app)


def load_registry(app: Any | None = None, entry_points: bool = True) -> Registry:
    """Load the built-ins and every ``layerif`` entry point into a fresh :class:`Registry`.

    ``app`` is the typer application that command hooks may extend (the CLI passes it).
    """
    from layerif_core import builtins

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    core_version = _version("layerif")
    pm.register(builtins, name="layerif.builtins")
    _call_plugin(registry, pm, builtins, "layerif", core_version, app)
    if not entry_points:
        return registry
    for ep in sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else ep.value
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            plugin = ep.load()
            pm.register(plugin, name=f"{dist}:{ep.name}")
        except Exception as exc:
            registry.problems.append(LoadProblem(dist, f"import failed: {type(exc).__name__}: {exc}"))
            log.warning("plugin '%s' skipped: import failed: %s", dist, exc)
            continue
        _call_plugin(registry, pm, plugin, dist, version, app)
    return registry


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


_REGISTRY: Registry | None = None


def get_registry(app: Any | None = None) -> Registry:
    """The process-wide registry, loaded on first use (the CLI passes its typer ``app`` first)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry(app=app)
    return _REGISTRY
