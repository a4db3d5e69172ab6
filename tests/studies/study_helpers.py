"""A tiny study: a tiny random Llama and a character tokenizer saved on disk (``model.source: <dir>``),
2 arms × 2 sparsities × 2 seeds of Wanda pruning with perplexity on a bundled task."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from layerif_core.testing import save_tiny_model

PPL = "perplexity/capitals"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_tiny_model(path)
    return path


def tiny_study(model_dir: Path, output_dir: Path, **changes: Any) -> dict[str, Any]:
    data = {
        "name": "tiny", "output_dir": str(output_dir),
        "base": {
            "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
            "batch_size": 4,
            "tasks": [{"name": "caps",
                       "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                       "validation": {"source": "bundled:capitals", "split": "validation", "limit": 3,
                                      "max_length": 96}}],
            "scorer": {"name": "layerif", "estimator": {"name": "grad_dot"},
                       "aggregator": {"name": "net_sum"}},
            "allocation": {"name": "alpha_pruning", "options": {"sparsity": 0.5, "epsilon": 0.3}},
            "application": {"name": "prune", "options": {
                "pruner": "wanda", "save_model": False, "save_masks": False,
                "calibration": {"source": "bundled:capitals", "text": "{question} {answer}",
                                "samples": 4, "seqlen": 32}}},
            "evaluation": [{"name": "perplexity", "options": {
                "source": "bundled:capitals", "split": "test", "text": "{question} {answer}",
                "limit": 40, "seqlen": 32, "max_windows": 4}}],
        },
        "arms": [
            {"label": "uniform", "control": True,
             "overrides": {"scorer.name": "uniform", "allocation.name": "uniform_sparsity",
                           "allocation.options": {}}},
            {"label": "LayerIF ALL", "overrides": {}},
        ],
        "grid": {"allocation.options.sparsity": [0.3, 0.6]},
        "seeds": [0, 1],
        "metrics": [PPL, {"name": "sparsity/achieved", "better": "none"}],
    }
    data.update(copy.deepcopy(changes))
    return data


def write_study(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
