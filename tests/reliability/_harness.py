"""Shared pieces of the reliability suite: a tiny llama saved to disk, configs for it, the CLI run
in-process (typer's CliRunner) or as a real subprocess, and the check that a run directory holds
nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from layerif_core.testing import save_tiny_model

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


save_tiny = save_tiny_model  # a tiny random model + the char tokenizer, as a model dir


def base_config(out: Path, model_dir: Path, **changes: Any) -> dict[str, Any]:
    """A valid config for the tiny model: one capitals task, EK-FAC + helpful_sum."""
    cfg: dict[str, Any] = {
        "name": "r", "output_dir": str(out),
        "model": {"source": str(model_dir), "device": "cpu", "dtype": "float32"},
        "tasks": [{"name": "caps",
                   "train": {"source": "bundled:capitals", "limit": 8, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation", "limit": 4,
                                  "max_length": 96}}],
        "scorer": {"name": "layerif", "estimator": {"name": "ekfac"},
                   "aggregator": {"name": "helpful_sum"}},
        "batch_size": 4,
    }
    cfg.update(changes)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(cfg))
    else:
        path.write_text(yaml.safe_dump(cfg))
    return path


_runner = CliRunner()
_app = None


def cli_app():
    global _app
    if _app is None:
        from layerif_core.cli import app
        from layerif_core.registry import get_registry

        get_registry(app=app)  # plugins add their commands, as `layerif` does at start-up
        _app = app
    return _app


def invoke(*args: str):
    """``layerif --quiet ARGS`` in this process; returns typer's Result (exit_code, output)."""
    return _runner.invoke(cli_app(), ["--quiet", *args])


def sub_env(extra_path: Path | None = None, **env: str) -> dict[str, str]:
    """Environment of a CLI subprocess: one thread, the repository and ``extra_path`` importable."""
    out = dict(os.environ)
    paths = [str(p) for p in (extra_path, REPO, TESTS) if p is not None]
    out["PYTHONPATH"] = os.pathsep.join(paths + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else []))
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    return out


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "layerif_core.cli", "--quiet", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``layerif --quiet ARGS`` as a real subprocess."""
    return subprocess.run(cli_command(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", None) or sub_env(), **kw)


def one_line(output: str) -> str:
    """The CLI's output with rich's soft wrapping undone."""
    return " ".join(output.split())


def half_written(run_dir: Path) -> list[str]:
    """Files under ``run_dir`` a rerun must not see: temp files of an interrupted atomic write, and
    artifacts that do not match the checksum the manifest records for them."""
    if not run_dir.exists():
        return []
    bad = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
           if p.name.endswith(".tmp") or p.name.startswith(".tmp-") or p.name == ".write-test"]
    from layerif_core.artifacts import verify_run_dir

    bad += [f"{rel} (checksum)" for rel in verify_run_dir(run_dir)]
    return bad


PLUGIN_DISTS = {
    "reliability-broken": ("reliability_broken", '''
import no_such_module_for_layerif_tests  # noqa: F401
'''),
    "reliability-clash": ("reliability_clash", '''
from layerif_core.hookspecs import hookimpl


@hookimpl
def layerif_register_estimators(register):
    register("clash_other", "layerif_core.estimators.grad_dot:GradDot")
    register("ekfac", "layerif_core.estimators.grad_dot:GradDot")
'''),
    "reliability-crash": ("reliability_crash", '''
from layerif_core.hookspecs import hookimpl


class Crashing:
    """Writes a scratch file into the run directory, then fails on the second batch."""

    def fit(self, ctx, train):
        scratch = ctx.run_dir.file("crash_scratch.txt")
        scratch.write_text("half")
        for i, _ in enumerate(train.batches(2)):
            if i == 1:
                raise RuntimeError("boom at batch 1")

    def influence(self, ctx, train, query):
        raise AssertionError("not reached")


def make(_options=None):
    return Crashing()


@hookimpl
def layerif_register_estimators(register):
    register("crashing_est", make)
'''),
}


def write_plugin_dists(root: Path) -> Path:
    """Installed-looking distributions (a module and its .dist-info with an entry point) under
    ``root``, which a subprocess gets on its PYTHONPATH."""
    root.mkdir(parents=True, exist_ok=True)
    for dist, (module, code) in PLUGIN_DISTS.items():
        (root / f"{module}.py").write_text(code)
        info = root / f"{module}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[layerif]\n{module} = {module}\n")
        (info / "top_level.txt").write_text(f"{module}\n")
    return root
