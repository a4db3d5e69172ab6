"""Plugin loading, validation, name lookup and listing.

Built-ins (:mod:`layerif_core.builtins`) and third-party plugins (entry points of the group
``layerif``) go through the same pluggy hooks (:mod:`hookspecs`). Every plugin is validated when it
loads, as pluggy's own ``register`` and ``check_pending`` do: a ``layerif_*`` function that matches no
hook (a misspelling) and a hook function whose arguments the spec does not offer are errors naming
the plugin and the closest hook. A plugin whose import fails, whose hook raises, or that registers a
name already taken is reported with its distribution's name and skipped (whatever it had registered
is removed); the others keep working.

Components are registered as objects or as lazy ``"module:attr"`` references, resolved on first use,
so that listing them (``layerif plugins``, ``layerif --help``) does not import torch.

A scorer or estimator also declares whether its result can change with the run's seed
(``seeded=``): a study computes the scores of a seed-free configuration once for every seed
(:meth:`Registry.uses_seed`). A component that declares nothing is seeded, which is always safe.

The environment variable ``LAYERIF_PLUGINS`` (comma-separated distribution names) is an allow-list
of third-party plugins for shared machines: entry points of other distributions are not imported,
and ``layerif plugins`` lists them as not loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from layerif_core import hookspecs
from layerif_core.errors import ConfigError, PluginError, closest

log = logging.getLogger(__name__)

KINDS = ("estimator", "aggregator", "scorer", "allocator", "application", "evaluator")
HOOKS = {
    "estimator": "layerif_register_estimators",
    "aggregator": "layerif_register_aggregators",
    "scorer": "layerif_register_scorers",
    "allocator": "layerif_register_allocators",
    "application": "layerif_register_applications",
    "evaluator": "layerif_register_evaluators",
}
COMMANDS_HOOK = "layerif_register_commands"
ALLOW_ENV = "LAYERIF_PLUGINS"
CORE = "layerif"
# the distributions of this repository: a failure inside them is layerif's own (an internal error)
FIRST_PARTY = frozenset({CORE, "layerif-prune", "layerif-eval", "layerif-lora-moe", "layerif-lora-ranks"})

Ref = Callable[..., Any] | str
Seeded = bool | Callable[..., bool] | str  # a constant, or a callable (or "module:attr") answering it
SEED_ARGUMENTS = ("options", "spec", "config")  # what a `seeded` callable may ask for


def resolve(ref: Any, what: str) -> Any:
    """The object behind a ``"module:attr"`` reference (other values are returned as they are)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except Exception as exc:
        raise PluginError(f"{what}: cannot load '{ref}' ({type(exc).__name__}: {exc}); reinstall the "
                          "plugin that provides it.") from None
    return obj


@dataclass(frozen=True)
class Component:
    """One registered name: its kind, factory, options class and where it came from."""

    kind: str
    name: str
    factory_ref: Ref
    options_ref: type[BaseModel] | str | None
    provider: str
    version: str
    help: str = ""
    seeded: Seeded = True

    @property
    def factory(self) -> Callable[..., Any]:
        return resolve(self.factory_ref, f"{self.kind} '{self.name}' from '{self.provider}'")

    @property
    def options_class(self) -> type[BaseModel] | None:
        if self.options_ref is None:
            return None
        cls = resolve(self.options_ref, f"options of {self.kind} '{self.name}' from '{self.provider}'")
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise PluginError(f"{self.kind} '{self.name}' from '{self.provider}': options must be a "
                              f"pydantic model class, got {cls!r}; fix the plugin.")
        return cls

    def options(self, raw: dict[str, Any] | BaseModel | None) -> BaseModel | None:
        """Validate ``raw`` options against this component's options class."""
        if isinstance(raw, BaseModel):
            return raw
        raw = dict(raw or {})
        cls = self.options_class
        if cls is None:
            if raw:
                raise ConfigError(
                    f"{self.kind} '{self.name}' takes no options but got {sorted(raw)}; remove them."
                )
            return None
        try:
            return cls(**raw)
        except ValidationError as exc:
            raise ConfigError(_options_message(self, cls, exc)) from None

    def build(self, raw: dict[str, Any] | BaseModel | None = None) -> Any:
        """Instantiate the component: ``factory(options)`` with the validated options object, or
        ``factory()`` when the component takes no options."""
        opts = self.options(raw)
        return self.factory() if self.options_ref is None else self.factory(opts)

    def uses_seed(self, raw: dict[str, Any] | BaseModel | None = None, spec: Any = None,
                  config: Any = None) -> bool:
        """Whether what this component computes with the options ``raw`` can change with the run's
        seed: its ``seeded`` declaration, a constant or a callable that receives, by parameter
        name, any of ``options`` (validated), ``spec`` (the configured component: ``name``,
        ``options``, and for a scorer its whole ``scorer:`` section) and ``config`` (the run)."""
        if isinstance(self.seeded, bool):
            return self.seeded
        what = f"seed declaration of {self.kind} '{self.name}' from '{self.provider}'"
        fn = resolve(self.seeded, what)
        asked = list(inspect.signature(fn).parameters)
        unknown = [a for a in asked if a not in SEED_ARGUMENTS]
        if unknown:
            raise PluginError(f"{what} asks for {unknown}; it may take {', '.join(SEED_ARGUMENTS)}: "
                              "rename its parameters.")
        offered = {"options": self.options(raw) if "options" in asked else None, "spec": spec,
                   "config": config}
        return bool(fn(**{a: offered[a] for a in asked}))


def _options_message(comp: Component, cls: type[BaseModel], exc: ValidationError) -> str:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo first
    key = ".".join(str(p) for p in err["loc"])
    fields = list(cls.model_fields)
    if err["type"] == "extra_forbidden":
        return (
            f"{comp.kind} '{comp.name}' has no option '{key}'{closest(key, fields)}; "
            f"its options are: {', '.join(fields) or 'none'}."
        )
    return f"{comp.kind} '{comp.name}' option '{key}': {err['msg']}."


@dataclass
class LoadProblem:
    """A plugin that was not loaded or registered, kept for ``layerif plugins``."""

    provider: str
    message: str


@dataclass
class PluginInfo:
    """A loaded plugin: its distribution, version, module and the hooks it implements."""

    provider: str
    version: str
    module: str
    hooks: list[str]
    plugin: object = field(default=None, repr=False, compare=False)


class Register:
    """The ``register`` function a hook receives, bound to the hook's kind::

        register("my_estimator", "my_pkg.estimator:MyEstimator", options="my_pkg.options:Opts",
                 help="One line for `layerif plugins`.", seeded=False)

    ``seeded`` (scorers and estimators): whether the result can change with the run's seed, as a
    bool or a callable (or ``"module:attr"``) of the options; unset: seeded (never shared).
    """

    def __init__(self, registry: Registry, kind: str):
        self.registry, self.kind = registry, kind

    def __call__(self, name: str, factory: Ref, options: type[BaseModel] | str | None = None,
                 help: str = "", seeded: Seeded = True) -> None:
        self.registry.add(self.kind, name, factory, options=options, help=help, seeded=seeded)

    def __repr__(self) -> str:
        return f"<register {self.kind}>"


@dataclass
class Registry:
    """Named factories of every kind, filled by the plugin hooks."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    problems: list[LoadProblem] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    apps: list[Any] = field(default_factory=list)  # typer apps the command hooks have extended
    _provider: tuple[str, str] = (CORE, "0")

    def add(self, kind: str, name: str, factory: Ref, options: type[BaseModel] | str | None = None,
            help: str = "", seeded: Seeded = True) -> None:
        """Register ``factory`` under ``kind``/``name``; ``options`` validates its options;
        ``seeded`` says whether its result can change with the seed (:meth:`Component.uses_seed`)."""
        if not (isinstance(seeded, bool | str) or callable(seeded)):
            raise PluginError(f"{kind} '{name}': seeded must be True, False or a callable (or "
                              f"'module:attr') of the options, got {seeded!r}; fix the plugin.")
        if kind not in self.components:
            raise PluginError(f"unknown component kind '{kind}'; use one of {', '.join(KINDS)}.")
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {kind} needs a non-empty string name, got {name!r}.")
        taken = self.components[kind].get(name)
        provider, version = self._provider
        if taken is not None:
            raise PluginError(
                f"{kind} name '{name}' from '{provider}' is already registered by "
                f"'{taken.provider}'; rename it in one of the two plugins."
            )
        doc = help or ("" if isinstance(factory, str) else (factory.__doc__ or "").strip().split("\n")[0])
        self.components[kind][name] = Component(kind, name, factory, options, provider, version, doc,
                                                seeded)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``, or an error listing the registered names."""
        known = self.components[kind]
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            skipped = "".join(f" Not loaded: plugin '{p.provider}' ({p.message})." for p in self.problems)
            raise PluginError(
                f"unknown {kind} '{name}'{closest(name, known)}; registered {kind}s: {names}.{skipped}"
            )
        return known[name]

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Instantiate component ``name`` of ``kind`` with ``options``."""
        return self.get(kind, name).build(options)

    def uses_seed(self, kind: str, spec: Any, config: Any = None) -> bool:
        """Whether the result of the configured component ``spec`` (its ``name`` and ``options``)
        can change with the run's seed, as the component declared when it registered; ``config``:
        the run, for declarations that depend on it (the ``layerif`` scorer asks its estimator and
        looks at the data)."""
        return self.get(kind, spec.name).uses_seed(spec.options, spec, config)

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in sorted(self.components[kind].values(), key=_by_name)]

    def provided_by(self, provider: str) -> list[Component]:
        return [c for c in self.all() if c.provider == provider]

    def versions(self) -> dict[str, str]:
        """Distribution → version of every loaded plugin (recorded in each run's manifest)."""
        return {p.provider: p.version for p in self.plugins}

    def add_commands(self, app: Any) -> None:
        """Let every loaded plugin add its sub-commands to ``app`` (once per app); a plugin whose
        command hook fails is reported and its commands withdrawn."""
        if any(a is app for a in self.apps):
            return
        self.apps.append(app)
        for info in self.plugins:
            fn = getattr(info.plugin, COMMANDS_HOOK, None)
            if fn is None:
                continue
            n_commands, n_groups = len(app.registered_commands), len(app.registered_groups)
            try:
                fn(**_arguments(fn, app=app))
                _check_commands(app)
            except Exception as exc:
                del app.registered_commands[n_commands:]
                del app.registered_groups[n_groups:]
                msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                self.problems.append(LoadProblem(info.provider, f"commands skipped: {msg}"))
                log.warning("plugin '%s': commands skipped: %s", info.provider, msg)


def _by_name(c: Component) -> str:
    return c.name


def validate_plugin(plugin: object, provider: str) -> None:
    """Refuse ``layerif_*`` functions that match no hook, and hook functions asking for arguments
    their hook does not pass (what pluggy's ``check_pending`` and ``register`` check), with the
    closest hook name and the arguments it offers."""
    specs = {name: list(inspect.signature(getattr(hookspecs, name)).parameters)
             for name in [*HOOKS.values(), COMMANDS_HOOK]}
    for attr in dir(plugin):
        if not attr.startswith("layerif_"):
            continue
        fn = getattr(plugin, attr)
        if not callable(fn) or inspect.isclass(fn):
            continue
        if attr not in specs:
            raise PluginError(f"plugin '{provider}' defines '{attr}', which is no layerif hook"
                              f"{closest(attr, specs)}; rename it (hooks: {', '.join(specs)}).")
        asked = [p for p in inspect.signature(fn).parameters]
        extra = [a for a in asked if a not in specs[attr]]
        if extra:
            raise PluginError(f"plugin '{provider}': hook '{attr}' receives ({', '.join(specs[attr])}) "
                              f"but its function asks for ({', '.join(asked)}); rename "
                              f"{', '.join(repr(a) for a in extra)} to {specs[attr][0]!r}.")


def _call_plugin(registry: Registry, pm: pluggy.PluginManager, plugin: object, provider: str,
                 version: str) -> None:
    """Validate one plugin and run its hooks, reverting what it added if anything fails midway."""
    registry._provider = (provider, version)
    before = {k: dict(v) for k, v in registry.components.items()}
    try:
        validate_plugin(plugin, provider)
        try:
            pm.register(plugin, name=f"{provider}:{getattr(plugin, '__name__', id(plugin))}")
            pm.check_pending()
        except pluggy.PluginValidationError as exc:  # a case validate_plugin did not phrase
            raise PluginError(f"plugin '{provider}' does not match the layerif hooks: {exc}") from None
        hooks = []
        for kind, hook in HOOKS.items():
            fn = getattr(plugin, hook, None)
            if fn is not None:
                hooks.append(hook)
                fn(**_arguments(fn, register=Register(registry, kind)))
        if getattr(plugin, COMMANDS_HOOK, None) is not None:
            hooks.append(COMMANDS_HOOK)
    except Exception as exc:  # a broken third-party plugin must not stop the others
        registry.components = before
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        registry.problems.append(LoadProblem(provider, msg))
        log.warning("plugin '%s' skipped: %s", provider, msg)
    else:
        module = getattr(plugin, "__name__", type(plugin).__name__)
        registry.plugins.append(PluginInfo(provider, version, module, hooks, plugin))
    finally:
        registry._provider = (CORE, "0")


def _arguments(fn: Callable[..., Any], **offered: Any) -> dict[str, Any]:
    """The hook arguments ``fn`` asks for (a hook function may take fewer than its spec offers)."""
    return {name: offered[name] for name in inspect.signature(fn).parameters}


def _check_commands(app: Any) -> None:
    """Build the click commands now, so that a plugin's malformed command fails here, where it is
    isolated, rather than when the CLI starts."""
    import typer.main

    typer.main.get_command(app)


def allow_list() -> set[str] | None:
    """The distributions ``LAYERIF_PLUGINS`` allows (None: no allow-list, every plugin loads)."""
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_registry(app: Any | None = None, entry_points: bool = True) -> Registry:
    """Load the built-ins and every allowed ``layerif`` entry point into a fresh :class:`Registry`.

    Args:
        app: the typer application that command hooks may extend (the CLI passes it).
        entry_points: load third-party plugins too (False: the built-ins only).
    """
    from layerif_core import builtins

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    _call_plugin(registry, pm, builtins, CORE, _version(CORE))
    if entry_points:
        _load_entry_points(registry, pm)
    if app is not None:
        registry.add_commands(app)
    return registry


def _load_entry_points(registry: Registry, pm: pluggy.PluginManager) -> None:
    allowed = allow_list()
    for ep in sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else ep.value
        version = ep.dist.version if ep.dist is not None else "unknown"
        if allowed is not None and dist not in allowed:
            registry.problems.append(LoadProblem(dist, f"not loaded: not in {ALLOW_ENV} "
                                                       f"({', '.join(sorted(allowed)) or 'empty'})"))
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            registry.problems.append(LoadProblem(dist, f"import failed: {type(exc).__name__}: {exc}"))
            log.warning("plugin '%s' skipped: import failed: %s", dist, exc)
            continue
        _call_plugin(registry, pm, plugin, dist, version)


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
    elif app is not None:
        _REGISTRY.add_commands(app)
    return _REGISTRY


def check_components(config: Any) -> None:
    """Every component the config names exists, accepts its options, and (with ``allow_plugins``)
    comes from an allowed distribution. An options object with a ``check_config(config)`` method is
    then checked against the whole run (``select`` checks its candidates and held-out data so).

    Args:
        config: the validated :class:`~layerif_core.config.RunConfig`; nothing is loaded or computed.
    """
    from layerif_core.errors import ConfigError

    registry = get_registry()
    named = [("scorer", config.scorer.name, config.scorer.options)]
    if config.scorer.name == "layerif":
        named += [("estimator", config.scorer.estimator.name, config.scorer.estimator.options),
                  ("aggregator", config.scorer.aggregator.name, config.scorer.aggregator.options)]
    for kind, spec in (("allocator", config.allocation), ("application", config.application)):
        if spec is not None:
            named.append((kind, spec.name, spec.options))
    named += [("evaluator", spec.name, spec.options) for spec in config.evaluation]
    checks = []
    for kind, name, options in named:
        comp = registry.get(kind, name)
        if kind != "scorer" or name != "layerif":
            check = getattr(comp.options(options), "check_config", None)
            if callable(check):
                checks.append(check)
        if config.allow_plugins is not None and comp.provider not in ("layerif", *config.allow_plugins):
            raise ConfigError(f"{kind} '{name}' comes from the plugin '{comp.provider}', which is not "
                              f"in allow_plugins ({', '.join(config.allow_plugins) or 'empty'}); add "
                              "it or choose another component.")
    for check in checks:  # options that are checked against the whole run (select's candidates)
        check(config)
