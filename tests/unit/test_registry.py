"""Plugin registry: built-ins through the hooks, clear lookups, broken plugins isolated."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from layerif_core.errors import ConfigError, PluginError
from layerif_core.protocols import Aggregator, Estimator, Scorer
from layerif_core.registry import load_registry


def test_builtins_register_through_the_hooks():
    reg = load_registry(entry_points=False)
    assert {"grad_dot"} <= set(reg.names("estimator"))
    assert {"helpful_sum", "top_helpful", "net_sum", "harmful_sum", "top_harmful"} <= set(
        reg.names("aggregator"))
    assert isinstance(reg.build("estimator", "grad_dot"), Estimator)
    assert isinstance(reg.build("aggregator", "helpful_sum"), Aggregator)
    assert isinstance(reg.build("scorer", "layerif"), Scorer)
    assert all(c.provider == "layerif" for c in reg.all())


def test_unknown_name_lists_registered_ones_and_suggests():
    reg = load_registry(entry_points=False)
    with pytest.raises(PluginError, match=r"unknown estimator 'grad_dott' \(did you mean 'grad_dot'\?\)"
                                          r"; registered estimators: .*grad_dot"):
        reg.get("estimator", "grad_dott")


def test_options_are_validated_by_the_component():
    reg = load_registry(entry_points=False)
    assert reg.build("aggregator", "top_helpful", {"fraction": 0.5}).fraction == 0.5
    with pytest.raises(ConfigError, match=r"has no option 'fracton' \(did you mean 'fraction'\?\)"):
        reg.build("aggregator", "top_helpful", {"fracton": 0.5})
    with pytest.raises(ConfigError, match="takes no options"):
        reg.build("estimator", "grad_dot", {"damping": 1})


def _dist(root, dist: str, module: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[layerif]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(source)


GOOD = """
from layerif_core import hookimpl

class Median:
    higher_is_better = False
    def __call__(self, influence):
        return (-influence).median(dim=1).values

@hookimpl
def layerif_register_aggregators(register):
    register("median_harm", Median)
"""
CLASH = """
from layerif_core import hookimpl

@hookimpl
def layerif_register_estimators(register):
    register("grad_dot", "collections:OrderedDict")
"""


def test_broken_and_clashing_plugins_are_reported_and_skipped(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-broken", "lif_broken", "raise ImportError('needs a missing package')\n")
    _dist(tmp_path, "lif-clash", "lif_clash", CLASH)
    _dist(tmp_path, "lif-good", "lif_good", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry()
    problems = {p.provider: p.message for p in reg.problems}
    assert "needs a missing package" in problems["lif-broken"]
    assert "already registered by 'layerif'" in problems["lif-clash"]
    assert reg.get("estimator", "grad_dot").provider == "layerif"
    good = reg.get("aggregator", "median_harm")
    assert (good.provider, good.version) == ("lif-good", "0.3")


BAD_COMMAND = """
from layerif_core import hookimpl

@hookimpl
def layerif_register_commands(app):
    @app.command("bad")
    def bad(x: UndefinedType) -> None:  # noqa: F821
        pass
"""


def test_plugin_with_a_broken_command_does_not_break_the_cli(tmp_path, monkeypatch):
    import typer
    import typer.main

    _dist(tmp_path, "lif-badcmd", "lif_badcmd", "from __future__ import annotations\n" + BAD_COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = typer.Typer()

    @app.command()
    def ok() -> None:
        """A command that works."""

    reg = load_registry(app=app)
    assert any(p.provider == "lif-badcmd" for p in reg.problems)
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "ok" in names and "bad" not in names
    typer.main.get_command(app)


MISSPELLED = """
from layerif_core import hookimpl

@hookimpl
def layerif_register_estimator(register):
    register("never_seen", "collections:OrderedDict")
"""
WRONG_ARGUMENT = """
from layerif_core import hookimpl

@hookimpl
def layerif_register_estimators(registry):
    registry.add("estimator", "never_seen", "collections:OrderedDict")
"""
RAISES_MIDWAY = """
from layerif_core import hookimpl

@hookimpl
def layerif_register_aggregators(register):
    register("half_registered", "collections:OrderedDict")
    raise RuntimeError("boom")
"""


def test_a_misspelled_hook_is_rejected_with_the_closest_hook(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-typo", "lif_typo", MISSPELLED)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry()
    problems = {p.provider: p.message for p in reg.problems}
    assert re.fullmatch(r"plugin 'lif-typo' defines 'layerif_register_estimator', which is no layerif "
                        r"hook \(did you mean 'layerif_register_estimators'\?\); rename it .*",
                        problems["lif-typo"])
    assert "never_seen" not in reg.names("estimator")


def test_a_hook_with_a_wrong_argument_name_is_rejected(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-oldapi", "lif_oldapi", WRONG_ARGUMENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry()
    problems = {p.provider: p.message for p in reg.problems}
    assert problems["lif-oldapi"] == (
        "plugin 'lif-oldapi': hook 'layerif_register_estimators' receives (register) but its function "
        "asks for (registry); rename 'registry' to 'register'.")
    assert "never_seen" not in reg.names("estimator")


def test_a_hook_that_raises_leaves_nothing_registered(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-raises", "lif_raises", RAISES_MIDWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry()
    assert {p.provider: p.message for p in reg.problems}["lif-raises"] == "RuntimeError: boom"
    assert "half_registered" not in reg.names("aggregator")
    assert "lif-raises" not in reg.versions()


def test_register_is_bound_to_its_hook_kind(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-good", "lif_good", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry()
    assert "median_harm" in reg.names("aggregator")
    assert all("median_harm" not in reg.names(k) for k in ("estimator", "scorer", "allocator"))
    assert reg.versions()["lif-good"] == "0.3"
    assert next(p for p in reg.plugins if p.provider == "lif-good").hooks == [
        "layerif_register_aggregators"]


def test_the_allow_list_keeps_other_plugins_unloaded(tmp_path, monkeypatch):
    _dist(tmp_path, "lif-good", "lif_good", GOOD)
    _dist(tmp_path, "lif-broken", "lif_broken", "raise ImportError('imported although not allowed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LAYERIF_PLUGINS", "lif-good")
    reg = load_registry()
    problems = {p.provider: p.message for p in reg.problems}
    assert problems["lif-broken"].startswith("not loaded: not in LAYERIF_PLUGINS (lif-good)")
    assert "median_harm" in reg.names("aggregator")


def test_listing_components_imports_no_torch():
    code = ("import sys; from layerif_core.registry import load_registry; r = load_registry(); "
            "r.get('estimator', 'ekfac').options({'fisher': 'empirical'}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_allow_plugins_refuses_components_of_other_distributions(tmp_path):
    from layerif_core.config import load_config
    from layerif_core.registry import check_components

    spec = {"source": "bundled:capitals"}
    data = {"tasks": [{"name": "c", "train": spec, "validation": spec}],
            "allocation": {"name": "uniform_sparsity", "options": {"sparsity": 0.5}},
            "application": {"name": "prune"}}
    check_components(load_config(data=data))
    with pytest.raises(ConfigError, match=r"application 'prune' comes from the plugin 'layerif-prune', "
                                          r"which is not in allow_plugins \(layerif-eval\)"):
        check_components(load_config(data={**data, "allow_plugins": ["layerif-eval"]}))
