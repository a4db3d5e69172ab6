"""Options of the ``perplexity`` and ``lm_eval`` evaluators (pydantic, importable without torch)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# three hand-written records in CoLA's schema: the example `layerif plugins check` runs offline
PAPER_SAMPLE = str(Path(__file__).parent / "tasks" / "paper_cola_sample.jsonl")


class PerplexityOptions(BaseModel):
    """Options of the ``perplexity`` evaluator."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"source": "bundled:wikitext2", "split": "test", "limit": 40,
                                         "seqlen": 64, "max_windows": 2}]})

    source: str = Field(
        ..., description="A text file (.txt, read whole), or any data source layerif reads (local "
        ".jsonl/.csv/.parquet, a hub dataset, 'bundled:<task>', the WikiText-2 text "
        "'bundled:wikitext2') whose records are joined with '\\n\\n'."
    )
    split: str = Field("test", description="Split of a dataset source (ignored for a .txt file).")
    config_name: str | None = Field(None, description="Hub dataset configuration, e.g. "
                                    "'wikitext-2-raw-v1'.")
    text: str = Field("{text}", description="Template of one record's text, fields in braces.")
    skip: int = Field(0, ge=0, description="Leave out the first `skip` records of a dataset or lines "
                      "of a bundled corpus (before `limit`), e.g. to keep held-out text apart from "
                      "calibration text (ignored for a .txt file).")
    limit: int | None = Field(None, ge=1, description="Use only the first `limit` records of a dataset.")
    seqlen: int | None = Field(
        None, ge=2, description="Window length in tokens; default min(model context, 2048). The "
        "pruning literature uses 2048 (4096 for LLaMA-2 in some papers)."
    )
    stride: int | None = Field(
        None, ge=1, description="Tokens between window starts; default seqlen (non-overlapping "
        "windows). Smaller strides give every scored token more context."
    )
    drop_last: bool = Field(
        True, description="Drop a trailing window shorter than seqlen, as the literature does."
    )
    max_windows: int | None = Field(None, ge=1, description="Score at most this many windows "
                                    "(a quick estimate).")
    batch_size: int = Field(1, ge=1, description="Windows per forward pass (logits are "
                            "batch × seqlen × vocab floats).")
    add_special_tokens: bool = Field(
        True, description="Let the tokenizer add its special tokens (e.g. one BOS at the start of the "
        "whole text), as the literature's `tokenizer(text)` does."
    )
    name: str | None = Field(None, description="Name in the metric keys (perplexity/<name>); "
                             "default the file stem or dataset name.")


class LmEvalOptions(BaseModel):
    """Options of the ``lm_eval`` evaluator."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model
        json_schema_extra={"examples": [{"tasks": ["layerif_capitals"], "limit": 4}]})

    tasks: list[str] = Field(
        ..., min_length=1, description="lm-eval task, group or tag names (e.g. 'layerif_capitals', "
        "'layerif_bundled', 'arc_easy'), or paths of task YAML files."
    )
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; default "
                                    "each task's own setting.")
    limit: float | None = Field(
        None, gt=0, description="Examples per task: a count (>= 1) or a fraction of the task (< 1)."
    )
    batch_size: int | None = Field(None, ge=1, description="Requests per forward pass; default the "
                                   "run's batch_size.")
    include_path: list[str] = Field(
        default_factory=list, description="Directories or YAML files of extra task definitions, "
        "e.g. tasks over local jsonl (`dataset_path: json`, `dataset_kwargs.data_files`)."
    )
    offline: bool | None = Field(
        None, description="Switch the Hugging Face hub off while evaluating; default on when every "
        "task is defined by local YAML files (shipped or include_path)."
    )
    bootstrap_iters: int = Field(1000, ge=0, description="Bootstrap resamples for the standard "
                                 "errors of metrics without a closed form (0: none).")
    max_length: int | None = Field(None, ge=2, description="Context length lm-eval truncates to; "
                                   "default the model's.")
    apply_chat_template: bool = Field(False, description="Format prompts with the tokenizer's chat "
                                      "template (instruction-tuned models).")
    shared_context: bool = Field(
        True, description="Compute a context shared by several continuations (the choices of a "
        "multiple-choice question) once, through the attention cache, and the vocabulary logits only "
        "where a continuation token is scored: HFLM's log-likelihoods with a fraction of the work "
        "(docs/evaluation.md). false: HFLM's own loop, one pass per choice.")


class PaperTaskOptions(BaseModel):
    """Options of the ``paper_tasks`` evaluator (the LayerIF authors' generation accuracy)."""

    model_config = ConfigDict(
        extra="forbid",  # the example: `layerif plugins check` on a tiny model, no hub
        json_schema_extra={"examples": [{"task": "cola", "data_files": PAPER_SAMPLE,
                                         "max_new_tokens": 8}]})

    task: str = Field(..., description="One of the paper's tasks: mrpc, cola, commonsense_qa, "
                      "openbookqa, scienceqa (the presets 'paper:<task>').")
    split: str = Field("test", description="Split of the preset: 'test' (the split the authors "
                       "evaluate on), 'validation' or 'train'.")
    data_files: str | list[str] | None = Field(
        None, description="A local copy of the split (parquet/json/jsonl/csv in the hub's schema) "
        "instead of the hub.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first `limit` examples.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per prompt (the authors' 128).")
    batch_size: int | None = Field(None, ge=1, description="Prompts per generate call (left-padded); "
                                   "default the run's batch_size.")


def perplexity_uses_seed(options: PerplexityOptions) -> bool:
    """Whether the perplexity can change with the run's seed: only over a bundled task, whose
    records are generated from the seed (a text, a file or a hub dataset reads as it is)."""
    from layerif_core.data import is_generated_task

    return is_generated_task(options.source)
