"""A third-party plugin, installed with pip as its own distribution, is used from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from layerif_core.testing import save_tiny_model

PLUGIN = Path(__file__).parent / "example-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(PLUGIN)], check=True)
    return target


def cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "layerif_core.cli", "--quiet", *args], cwd=cwd,
                          env=env, capture_output=True, text=True)


def test_installed_plugin_is_listed_with_its_provider(site, tmp_path):
    out = cli(site, "plugins", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["components"]
    row = next(r for r in rows if r["name"] == "unit_query_dot")
    assert (row["kind"], row["provider"], row["version"]) == (
        "estimator", "layerif-example-estimator", "0.1.0")


def test_installed_estimator_runs_through_the_cli(site, tmp_path):
    model_dir = tmp_path / "tiny"
    save_tiny_model(model_dir)
    spec = {"source": "bundled:capitals", "limit": 5, "max_length": 96}
    config = {"name": "p", "output_dir": str(tmp_path / "runs"), "model": {"source": str(model_dir)},
              "tasks": [{"name": "c", "train": spec, "validation": dict(spec, split="validation")}],
              "batch_size": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name in ("unit_query_dot", "grad_dot"):
        out = cli(site, "scores", "c.yaml", "--set", f"scorer.estimator.name={name}",
                  "--set", f"name={name}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        runs[name] = load_file(str(tmp_path / "runs" / name / "influence.safetensors"))["c"]
        scores = json.loads((tmp_path / "runs" / name / "scores.json").read_text())
        assert scores["c"]["details"]["estimator"] == name
    # the plugin scales each layer's query gradient to unit norm: one positive factor per layer
    ratio = runs["grad_dot"] / runs["unit_query_dot"]
    assert (ratio > 0).all()
    assert (ratio.std(dim=1) < 1e-3 * ratio.mean(dim=1)).all()


def test_installed_plugin_passes_the_conformance_suite(site, tmp_path):
    out = cli(site, "plugins", "check", "layerif-example-estimator", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "unit_query_dot" in out.stdout and "FAILED" not in out.stdout
