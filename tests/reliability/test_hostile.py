"""Hostile configs and plugins: nothing is unpickled or evaluated, remote code stays off unless asked
(and is recorded when on), plugins outside the allow-list are never imported, and random mutations of
valid configs end in exit code 0 or 2, never in a traceback."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from _harness import REPO, base_config, invoke, run_cli, save_tiny, sub_env, write_config, write_plugin_dists
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SOURCES = sorted(p for d in ("layerif_core", "plugins") for p in (REPO / d).rglob("*.py")
                 if ".egg-info" not in str(p))
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNPICKLERS = ("pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal")


def unsafe_calls(path: Path) -> list[str]:
    """Unpickling and code evaluation in one source file, as ``path:line: what``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def at(node: ast.AST, what: str) -> None:
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNPICKLERS:
                    at(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNPICKLERS:
                at(node, f"from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            kwargs = {k.arg: k.value for k in node.keywords}
            attr = isinstance(func, ast.Attribute)
            name = func.id if isinstance(func, ast.Name) else func.attr if attr else ""
            owner = func.value.id if attr and isinstance(func.value, ast.Name) else ""
            if isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                at(node, f"{name}()")
            if owner == "torch" and name == "load":
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    at(node, "torch.load without weights_only=True")
            if owner == "yaml" and name in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"):
                at(node, f"yaml.{name}")
            if owner == "yaml" and name == "load":
                loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
                loader_name = getattr(loader, "attr", getattr(loader, "id", None))
                if loader_name not in SAFE_YAML_LOADERS:
                    at(node, "yaml.load without a safe loader")
            if name in ("read_pickle", "from_pickle") or (name == "load" and kwargs.get("allow_pickle")):
                at(node, f"{name} (unpickles)")
            if kwargs.get("trust_remote_code") is not None and isinstance(kwargs["trust_remote_code"],
                                                                          ast.Constant) \
                    and kwargs["trust_remote_code"].value is True:
                at(node, "trust_remote_code=True hard-coded")
    return found


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle\nimport torch, yaml\nx = torch.load('f')\n"
                   "y = torch.load('f', weights_only=False)\nv = torch.load('f', weights_only=True)\n"
                   "z = yaml.load(t, Loader=yaml.Loader)\nw = yaml.load(t, Loader=yaml.SafeLoader)\n"
                   "eval(cfg)\nmodel.eval()\nfrom_pretrained('x', trust_remote_code=True)\n")
    hits = [h.split(": ", 1)[1] for h in unsafe_calls(bad)]
    assert sorted(hits) == sorted(["import pickle", "torch.load without weights_only=True",
                                   "torch.load without weights_only=True", "yaml.load without a safe loader",
                                   "eval()", "trust_remote_code=True hard-coded"])


def test_nothing_is_unpickled_or_evaluated_in_the_library_and_plugins():
    assert len(SOURCES) > 50
    found = [hit for path in SOURCES for hit in unsafe_calls(path)]
    assert found == []


# --- remote code --------------------------------------------------------------------------------
CUSTOM_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "custom_thing"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory) -> Path:
    path = save_tiny(tmp_path_factory.mktemp("remote") / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "custom_thing"
    cfg["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                       "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "modeling_custom.py").write_text(CUSTOM_CODE)
    return path


def test_remote_code_is_off_unless_set_and_recorded_when_on(remote_model, tmp_path, caplog):
    from layerif_core.config import ModelSpec

    assert ModelSpec().trust_remote_code is False
    cfg = base_config(tmp_path / "runs", remote_model, scorer={"name": "layerif", "estimator": {
        "name": "grad_dot"}})
    off = invoke("run", str(write_config(tmp_path / "off.yaml", cfg)))
    assert off.exit_code == 2 and "set model.trust_remote_code=true" in " ".join(off.output.split())
    cfg["model"]["trust_remote_code"] = True
    on = invoke("run", str(write_config(tmp_path / "on.yaml", cfg)))
    assert on.exit_code == 0, on.output
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["config"]["model"]["trust_remote_code"] is True
    assert manifest["model"]["class"] == "CustomForCausalLM"  # its own code ran
    assert "trust_remote_code=true: code shipped with it ran" in caplog.text


# --- plugin allow-list ------------------------------------------------------------------------------
def test_plugins_outside_the_allow_list_are_not_imported(tmp_path):
    plugins = write_plugin_dists(tmp_path / "plugins")
    env = sub_env(plugins, LAYERIF_PLUGINS="layerif-prune")
    proc = run_cli("plugins", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    problems = {p["provider"]: p["message"] for p in listed["problems"]}
    for dist in ("reliability-broken", "reliability-clash", "reliability-crash"):
        # not 'import failed': the broken plugin was never imported
        assert problems[dist].startswith("not loaded: not in LAYERIF_PLUGINS"), problems[dist]
    names = {c["name"] for c in listed["components"]}
    assert "crashing_est" not in names and "prune" in names


def test_allow_plugins_in_the_config_refuses_other_plugins(tmp_path):
    plugins = write_plugin_dists(tmp_path / "plugins")
    model = save_tiny(tmp_path / "tiny")
    cfg = base_config(tmp_path / "runs", model, allow_plugins=["layerif-prune"],
                      scorer={"name": "layerif", "estimator": {"name": "crashing_est"}})
    proc = run_cli("config", "check", str(write_config(tmp_path / "c.yaml", cfg)), cwd=tmp_path,
                   env=sub_env(plugins))
    assert proc.returncode == 2
    assert ("estimator 'crashing_est' comes from the plugin 'reliability-crash', which is not in "
            "allow_plugins (layerif-prune)") in " ".join(proc.stderr.split())


# --- fuzzing ----------------------------------------------------------------------------------------
POOL = [None, 0, -1, 1, 2, 3.5, 10**12, float("nan"), "", "x", "../../etc", "embedded:nope",
        "bundled:capitals", "{missing}", True, [], [1, "a"], {}, {"name": "ekfac"}, {"unknown": 1},
        "ü" * 3, "q_proj|v_proj",
        "validation", "cpu", "float16"]


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested config (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def mutate(cfg: dict, draw) -> dict:
    cfg = copy.deepcopy(cfg)
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(paths(cfg)))
        parent = cfg
        for part in target[:-1]:
            parent = parent[part]
        key = target[-1]
        action = draw(st.sampled_from(["set", "delete", "rename", "add"]))
        if action == "set":
            parent[key] = draw(st.sampled_from(POOL))
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[str(key)[:-1] + draw(st.sampled_from("aexs_"))] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "Name", "options", "limit", "spilt"]))] = draw(
                st.sampled_from(POOL))
    return cfg


@st.composite
def mutated_configs(draw, base: dict) -> tuple[dict, str]:
    return mutate(base, draw), draw(st.sampled_from([".yaml", ".json"]))


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("fuzz") / "tiny")


def write_any(path: Path, cfg: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(cfg, allow_nan=True))
    else:
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def fuzz_base(tmp: Path, model: Path) -> dict:
    return base_config(tmp / "runs", model, scorer={"name": "layerif", "estimator": {"name": "grad_dot"},
                                                    "aggregator": {"name": "helpful_sum"}},
                       allocation={"name": "alpha_pruning", "options": {"sparsity": 0.5}})


def test_mutated_configs_never_end_in_a_traceback_in_config_check(fuzz_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    base = fuzz_base(tmp, fuzz_model)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_configs(base))
    def check(case):
        cfg, suffix = case
        out = invoke("config", "check", str(write_any(tmp / f"c{suffix}", cfg)))
        assert out.exit_code in (0, 2), out.output
        assert "Traceback" not in out.output and "internal error" not in out.output

    check()


def test_mutated_configs_never_end_in_a_traceback_in_a_run(fuzz_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    base = fuzz_base(tmp, fuzz_model)
    base["tasks"][0]["train"]["limit"] = 4
    base["tasks"][0]["validation"]["limit"] = 2

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_configs(base))
    def run(case):
        cfg, suffix = case
        out = invoke("run", str(write_any(tmp / f"c{suffix}", cfg)))
        assert out.exit_code in (0, 2), out.output
        assert "Traceback" not in out.output and "internal error" not in out.output

    run()
