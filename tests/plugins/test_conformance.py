"""The conformance suite over every registered component (built-ins and installed plugins): each
goes through its protocol on a tiny random Llama (layerif_core.conformance), as a third-party author
runs it with `layerif plugins check NAME`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from layerif_core.conformance import check_component, components_of
from layerif_core.registry import get_registry

COMPONENTS = get_registry().all()


@pytest.mark.parametrize("comp", COMPONENTS, ids=[f"{c.kind}:{c.name}" for c in COMPONENTS])
def test_component_follows_its_protocol(comp):
    result = check_component(comp)
    assert result.ok, f"{comp.kind} '{comp.name}' from '{comp.provider}': {result.message}"


def test_every_kind_and_plugin_distribution_is_covered():
    kinds = {c.kind for c in COMPONENTS}
    assert kinds == {"estimator", "aggregator", "scorer", "allocator", "application", "evaluator"}
    assert {"layerif", "layerif-prune", "layerif-lora-moe", "layerif-eval"} <= {
        c.provider for c in COMPONENTS}


class Broken:
    """An estimator whose influence has the wrong shape."""

    def fit(self, ctx, train):
        pass

    def influence(self, ctx, train, query):
        import torch

        return torch.zeros(len(train), len(ctx.layer_map))  # transposed


def test_a_broken_component_fails_with_the_reason():
    from layerif_core.registry import Component

    comp = Component("estimator", "broken", Broken, None, "lif-broken", "0.1")
    result = check_component(comp)
    assert not result.ok
    assert result.message == "influence() returned shape (6, 3), expected [layers, train examples] = (3, 6)"


def test_plugins_check_runs_a_distribution_from_the_cli():
    from layerif_core.cli import app

    out = CliRunner().invoke(app, ["plugins", "check", "top_helpful"])
    assert out.exit_code == 0, out.output
    assert "aggregator" in out.output and "top_helpful" in out.output and "ok" in out.output
    assert [c.name for c in components_of("layerif-prune")] == ["prune"]


def test_plugins_check_of_an_unknown_name_is_one_line():
    from layerif_core.cli import app

    out = CliRunner().invoke(app, ["plugins", "check", "layerif-prun"])
    assert out.exit_code == 2
    assert "no plugin distribution or component named 'layerif-prun' (did you mean 'layerif-prune'?)" in \
        " ".join(out.output.split())
