"""The LayerIF authors' evaluation of their five tasks: greedy generation, answer extraction by their
regular expressions, exact-match accuracy (HadiAskari/Expert_Allocation, ``evaluation.py``).

Each test record's instruction goes into the Alpaca-LoRA prompt (``alpaca``), the model generates up
to 128 new tokens greedily (``generate`` with no sampling settings), the decoded sequence is cut after
``"### Response:"`` and stripped (their ``Prompter.get_response``), and the answer is extracted:

- MRPC, CoLA: ``re.search(r"Answer: ([\\w\\s]+)")``; the captured words count only when they are
  exactly one of the task's label words (``equivalent`` / ``not equivalent``, ``acceptable`` /
  ``unacceptable``), otherwise the prediction is ``FAILED``;
- CommonsenseQA, OpenBookQA, ScienceQA: the first of ``re.findall(r"The answer is ([A-Z]).")``.

accuracy = 100 · #{prediction == answer} / #examples (their ``acc``, in percent).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from layerif_core.tasks.paper import RESPONSE_SPLIT, PaperTask, paper_records, paper_task
from layerif_eval.options import PaperTaskOptions
from layerif_eval.perplexity import _version, record_provenance

GLUE_PATTERN = re.compile(r"Answer: ([\w\s]+)")
CHOICE_PATTERN = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def response(decoded: str) -> str:
    """The text after the prompt's ``"### Response:"`` (the authors' ``get_response``)."""
    parts = decoded.split(RESPONSE_SPLIT)
    return parts[1].strip() if len(parts) > 1 else ""


def extract(task: PaperTask, text: str) -> str:
    """The predicted answer in a response, ``FAILED`` when there is none (module docstring)."""
    if task.kind == "glue":
        match = GLUE_PATTERN.search(text)
        words = match.group(1) if match else "N/A"
        return words if words in task.labels else FAILED
    found = CHOICE_PATTERN.findall(text)
    return found[0] if found else FAILED


def accuracy(predictions: list[str], answers: list[str]) -> float:
    """Exact-match accuracy in percent."""
    return 100.0 * sum(p == a for p, a in zip(predictions, answers, strict=True)) / len(answers)


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int,
             batch_size: int) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), each decoded together with its
    prompt as the authors decode (special tokens kept)."""
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad_token is None:  # Llama/Mistral tokenizers have none; the padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], padding=True, return_tensors="pt")
            seqs = model.generate(input_ids=enc["input_ids"].to(device),
                                  attention_mask=enc["attention_mask"].to(device),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=pad)
            out += tokenizer.batch_decode(seqs, skip_special_tokens=False)
    finally:
        tokenizer.padding_side = side
        if pad_token is None:
            tokenizer.pad_token = None
    return out


class PaperAccuracy:
    """Generation accuracy on one of the paper's tasks, scored as the authors score it."""

    def __init__(self, opts: PaperTaskOptions):
        self.opts = opts
        self.task = paper_task(opts.task)
        self.report: dict[str, Any] = {}

    def estimate(self, work):
        """What the evaluation will cost (``layerif study --plan``; :mod:`layerif_eval.cost`)."""
        from layerif_eval.cost import paper_tasks

        return paper_tasks(self.opts, work)

    def evaluate(self, ctx: Any, model: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        opts = self.opts
        records = paper_records(opts.task, opts.split, opts.data_files)[: opts.limit]
        batch_size = opts.batch_size or getattr(ctx, "batch_size", 1)
        was_training = model.training
        model.eval()
        try:
            decoded = generate(model, tokenizer, [r["alpaca"] for r in records], opts.max_new_tokens,
                               batch_size)
        finally:
            model.train(was_training)
        responses = [response(d) for d in decoded]
        predictions = [extract(self.task, r) for r in responses]
        answers = [r["answer"] for r in records]
        acc = accuracy(predictions, answers)
        self.report = {"evaluator": "paper_tasks", "provider": "layerif-eval", "version": _version(),
                       "options": opts.model_dump(), "batch_size": batch_size,
                       "dataset": self.task.hub, "n": len(records)}
        run_dir = getattr(ctx, "run_dir", None)
        if run_dir is not None:  # every response and prediction, as the authors' results file keeps
            self.report["outputs"] = f"paper_{opts.task}_{opts.split}.json"
            run_dir.write_json(self.report["outputs"], {
                "accuracy_pct": acc, "answers": answers, "predictions": predictions,
                "responses": responses})
        record_provenance(ctx, f"paper_tasks/{opts.task}", self.report)
        key = f"paper/{opts.task}"
        return {f"{key}/accuracy_pct": acc, f"{key}/n": float(len(records)),
                f"{key}/failed": float(predictions.count(FAILED))}
