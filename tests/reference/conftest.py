"""Fixtures of the reference tests: the tiny model and its examples, the authors' procedure computed
once on them (``authors.py``), and layerif's runs on the same examples (``layerif_side.py``), each
computed once per session and shared by the tests that compare them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from layerif_core.tasks import bundled_records
from layerif_core.testing import char_tokenizer, tiny_model
from reference import authors
from reference.layerif_side import LayerifResult, qa_task, run_layerif, text_task

TINY_TOTAL = 12  # experts over the tiny model's 3 blocks (4 per block on average)
TINY_SEED = 2  # a random init under which the three cells give three different expert vectors
TINY_SOURCE = f"tiny-llama (layerif_core.testing.tiny_model, seed {TINY_SEED})"


def _qa(task: str, split: str, n: int) -> list[dict[str, str]]:
    return [{"question": r["question"], "answer": r["answer"]} for r in bundled_records(task, split)[:n]]


# 8 training examples of varied lengths (42-78 characters) and 4 validation examples, from the
# bundled tasks; the last two training examples are off-task strings so that some influences are
# harmful (positive in the authors' sign) and the "+VE" cell's "delete the entries > 0" step matters.
# The arithmetic questions are written out (those of the task's generator version 1) so that a new
# version of the generator does not change these inputs.
TRAIN_QA = (_qa("capitals", "train", 3) + _qa("antonyms", "train", 2)
            + [{"question": "Ben has 18 marbles and gives away 4. How many marbles are left?",
                "answer": "14"},
               {"question": "QQQQQQQQQQQQQQQQQQ", "answer": "QQ"},
               {"question": "ZXJZXJZXJZXJZXJZXJZXJ", "answer": "ZXJ"}])
VAL_QA = _qa("capitals", "validation", 2) + [
    {"question": "Nia has 15 apples and gives away 5. How many apples are left?", "answer": "10"},
    {"question": "Mateo has 12 books, finds 14 more and then loses 8. How many books does Mateo have "
                 "now?", "answer": "18"}]


def as_text(record: dict[str, str]) -> str:
    """The authors' example text: the instruction, then " Answer: " and the answer."""
    return f"{record['question']} Answer: {record['answer']}"


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's own tokens, no special tokens (the input both sides are given: the authors'
    Mistral tokenizer adds a BOS, but tokenisation is not the method under test)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@dataclass
class Reference:
    tables: dict[int, torch.Tensor]  # block → IF[v, i], the authors' sign

    def cell(self, name: str) -> torch.Tensor:
        """One value per block of the notebook cell ``name`` ("+VE", "TOP-25%", "ALL", "harmful")."""
        fn = {"+VE": authors.positive_cell, "TOP-25%": authors.top_cell, "ALL": authors.all_cell,
              "harmful": authors.harmful_cell}[name]
        return torch.tensor([fn(t) for t in self.tables.values()], dtype=torch.float64)

    def per_example(self) -> torch.Tensor:
        """``[L, N]``: the IF table of each block summed over the validation examples."""
        return torch.tensor([authors.per_example_influence(t) for t in self.tables.values()],
                            dtype=torch.float64)


def reference_of(model: torch.nn.Module, tokenizer, train: list[str], val: list[str]) -> Reference:
    grads_train = authors.example_gradients(model, tokenize(tokenizer, train))
    grads_val = authors.example_gradients(model, tokenize(tokenizer, val))
    return Reference(authors.datainf_if_tables(grads_train, grads_val))


def padded_reference_of(model: torch.nn.Module, tokenizer, train: list[str], val: list[str]
                        ) -> Reference:
    """The authors' procedure with their tokenisation (each split padded with EOS to its longest,
    the pads in the loss); a bfloat16 ``model`` gives their bfloat16 gradients, combined in their
    code's dtypes (``datainf_if_tables_in_their_dtypes``), a float32 one float64 arithmetic."""
    half = next(model.parameters()).dtype == torch.bfloat16
    grads = []
    for texts in (train, val):
        padded = authors.pad_split(tokenize(tokenizer, texts), tokenizer.eos_token_id)
        grads.append(authors.example_gradients(model, [ids for ids, _ in padded],
                                               [mask for _, mask in padded],
                                               None if half else torch.float64))
    tables = (authors.datainf_if_tables_in_their_dtypes if half else authors.datainf_if_tables)(*grads)
    return Reference(tables)


@pytest.fixture(scope="session")
def tiny_reference() -> Reference:
    """The authors' procedure on the tiny model and the tiny examples."""
    return reference_of(tiny_model(seed=TINY_SEED), char_tokenizer(), [as_text(r) for r in TRAIN_QA],
                        [as_text(r) for r in VAL_QA])


@pytest.fixture(scope="session")
def tiny_reference_padded() -> Reference:
    """The authors' procedure with their padding (float32 model, float64 arithmetic)."""
    return padded_reference_of(tiny_model(seed=TINY_SEED), char_tokenizer(),
                               [as_text(r) for r in TRAIN_QA], [as_text(r) for r in VAL_QA])


@pytest.fixture(scope="session")
def tiny_reference_bf16() -> Reference:
    """The authors' run as they ran it: their padding, the model in bfloat16, bf16 gradients and
    their code's dtypes."""
    return padded_reference_of(tiny_model(seed=TINY_SEED).to(torch.bfloat16), char_tokenizer(),
                               [as_text(r) for r in TRAIN_QA], [as_text(r) for r in VAL_QA])


@pytest.fixture(scope="session")
def tiny_layerif(tmp_path_factory) -> Callable[..., LayerifResult]:
    """``tiny_layerif(aggregator, mode=None, data="text", tokens="all", reduction="mean",
    padding="none", dtype="float32")``: layerif on the tiny model (in ``dtype``) and the tiny
    examples, as whole texts (``data="text"``) or as prompt/completion records (``data="qa"``).
    Runs that differ only in the aggregator share a run directory, so layerif computes their
    influence matrix once."""
    cache: dict[tuple, LayerifResult] = {}

    def run(aggregator: str, mode: str | None = None, data: str = "text", tokens: str = "all",
            reduction: str = "mean", padding: str = "none", dtype: str = "float32",
            **options) -> LayerifResult:
        key = (aggregator, mode, data, tokens, reduction, padding, dtype, tuple(sorted(options.items())))
        if key not in cache:
            directory = (tmp_path_factory.getbasetemp()
                         / f"tiny-{data}-{mode}-{tokens}-{reduction}-{padding}-{dtype}")
            task = (text_task(directory, [as_text(r) for r in TRAIN_QA], [as_text(r) for r in VAL_QA])
                    if data == "text" else qa_task(directory, TRAIN_QA, VAL_QA))
            model = tiny_model(seed=TINY_SEED).to(getattr(torch, dtype))
            cache[key] = run_layerif(directory / "runs", model, char_tokenizer(), task,
                                     source=TINY_SOURCE, aggregator=aggregator, total=TINY_TOTAL,
                                     mode=mode, tokens=tokens, reduction=reduction, padding=padding,
                                     dtype=dtype, aggregator_options=options)
        return cache[key]

    return run
