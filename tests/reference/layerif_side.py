"""layerif's side of the reference tests: the same data and the same computation asked of layerif
through its public config (``RunConfig``) and API (``open_run``, ``compute_layer_scores``,
``allocate``), nothing else. The reference (``authors.py``) never imports this module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from layerif_core import compute_layer_scores, open_run
from layerif_core.config import RunConfig
from layerif_core.estimators.options import DataInfOptions
from layerif_core.pipeline import allocate

TASK = "t"
BETA = 3.0
# DataInf's two implementations, once the option exists (both must give the authors' numbers)
MODES: list[str | None] = (["stored", "streaming"] if "mode" in DataInfOptions.model_fields
                           else [None])


@dataclass
class LayerifResult:
    scores: torch.Tensor  # [L] float64, layerif's sign (I > 0 helpful)
    higher_is_better: bool
    influence: torch.Tensor  # [L, N] float64, I[l, i] summed over the validation examples
    experts: list[int]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def text_task(directory: Path, train: list[str], val: list[str]) -> dict[str, Any]:
    """A task of whole texts (a ``text`` field): layerif tokenises each with
    ``tokenizer(text, add_special_tokens=False)`` and every token is in the loss."""
    directory.mkdir(parents=True, exist_ok=True)
    return {"name": TASK,
            "train": {"source": write_jsonl(directory / "train.jsonl", [{"text": t} for t in train]),
                      "text": "{text}"},
            "validation": {"source": write_jsonl(directory / "val.jsonl", [{"text": t} for t in val]),
                           "text": "{text}"}}


def qa_task(directory: Path, train: list[dict], val: list[dict]) -> dict[str, Any]:
    """The same examples as prompt ("<question> Answer: ") and completion ("<answer>")."""
    directory.mkdir(parents=True, exist_ok=True)
    templates = {"prompt": "{question} Answer: ", "completion": "{answer}"}
    return {"name": TASK,
            "train": {"source": write_jsonl(directory / "train.jsonl", train), **templates},
            "validation": {"source": write_jsonl(directory / "val.jsonl", val), **templates}}


def run_layerif(output_dir: Path, model: torch.nn.Module, tokenizer: Any, task: dict[str, Any], *,
                source: str, aggregator: str, total: int, mode: str | None = None,
                tokens: str = "all", reduction: str = "mean", padding: str = "none",
                dtype: str = "float32", aggregator_options: dict | None = None,
                batch_size: int = 4, max_length: int | None = None) -> LayerifResult:
    """Scores, influence matrix and experts of one layerif run: DataInf on every block's full
    attention q/k/v/o weights, ``alphalora_experts`` with β = 3. ``batch_size`` > 1 on purpose: the
    authors run one example per backward, and layerif's batching must not change the numbers.
    ``padding``: ``scorer.loss.padding``; ``dtype``: the dtype ``model`` is in (as the config
    states it)."""
    if max_length is not None:
        task = {**task, **{part: {**task[part], "max_length": max_length}
                           for part in ("train", "validation")}}
    cfg = RunConfig.model_validate({
        "name": "run", "output_dir": str(output_dir), "batch_size": batch_size,
        "model": {"source": source, "dtype": dtype, "device": "cpu"},
        "layers": {"modules": "attention"},
        "tasks": [task],
        "scorer": {"name": "layerif",
                   "estimator": {"name": "datainf", "options": {"mode": mode} if mode else {}},
                   "aggregator": {"name": aggregator, "options": aggregator_options or {}},
                   "loss": {"tokens": tokens, "reduction": reduction, "padding": padding}},
        "allocation": {"name": "alphalora_experts", "options": {"total": total, "beta": BETA}},
    })
    ctx = open_run(cfg, model=model, tokenizer=tokenizer, show_progress=False)
    scores = compute_layer_scores(ctx)[TASK]
    experts = allocate(ctx, {TASK: scores})[TASK].values
    influence = load_file(str(ctx.run_dir.path / "influence.safetensors"))[TASK]
    return LayerifResult(scores.values.double(), scores.higher_is_better, influence.double(),
                         [int(e) for e in experts])


def allocate_experts(output_dir: Path, scores: list[float], total: int) -> list[int]:
    """layerif's ``alphalora_experts`` (β = 3) on given LayerIF scores (layerif's sign, higher = less
    mature), through ``allocate`` on a run over a tiny model with one block per score."""
    from layerif_core.results import LayerScores
    from layerif_core.testing import char_tokenizer, tiny_model

    task = text_task(output_dir, ["unused"], ["unused"])
    cfg = RunConfig.model_validate({
        "name": "experts", "output_dir": str(output_dir / "runs"),
        "model": {"source": "tiny-llama", "dtype": "float32", "device": "cpu"},
        "tasks": [task],
        "allocation": {"name": "alphalora_experts", "options": {"total": total, "beta": BETA}},
    })
    ctx = open_run(cfg, model=tiny_model(num_hidden_layers=len(scores)), tokenizer=char_tokenizer(),
                   show_progress=False)
    values = LayerScores(torch.tensor(scores, dtype=torch.float32), False, "layerif")
    return [int(e) for e in allocate(ctx, {TASK: values})[TASK].values]
