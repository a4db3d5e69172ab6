"""The ``paper_tasks`` evaluator on a tiny random-init model: its responses are the model's greedy
continuations of the Alpaca prompts (recomputed here token by token, one prompt at a time, without
``generate`` or padding) and its accuracy is the exact match of what the authors' regexes extract."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import make_ctx
from layerif_core.registry import get_registry
from layerif_core.testing import save_tiny_model, tiny_model

VOCAB = ["<pad>", "<eos>", "<unk>"] + sorted(set(string.printable) - {"\x0b", "\x0c"})


def printable_tokenizer():
    """A character-level tokenizer over printable ASCII that decodes back to the same text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def greedy(model, tok, prompt: str, new: int) -> str:
    ids = tok(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(new):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
    return tok.decode(out, skip_special_tokens=False)


COLA = [{"sentence": "The cat sat on the mat.", "label": 1, "idx": 0},
        {"sentence": "Mat the on sat.", "label": 0, "idx": 1},
        {"sentence": "Dogs bark loudly at night.", "label": 1, "idx": 2}]


@pytest.fixture
def cola_file(tmp_path):
    import datasets

    path = tmp_path / "cola_validation.parquet"
    datasets.Dataset.from_list(COLA).to_parquet(str(path))
    return str(path)


def test_responses_are_greedy_continuations_and_accuracy_is_their_exact_match(tmp_path, cola_file):
    tok = printable_tokenizer()
    model = tiny_model("llama", vocab_size=len(VOCAB), max_position_embeddings=1024)
    ctx = make_ctx(tmp_path, model=model)  # the evaluator is handed the printable tokenizer below
    ev = get_registry().build("evaluator", "paper_tasks",
                              {"task": "cola", "data_files": cola_file, "max_new_tokens": 12,
                               "batch_size": 2})
    metrics = ev.evaluate(ctx, model, tok)
    saved = json.loads(ctx.run_dir.file(ev.report["outputs"]).read_text())

    head = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nTell me if the statement unacceptable, "
            "acceptable.\nSentence: ")
    want = [greedy(model, tok, f"{head}{r['sentence']}\n\n\n### Response:\n", 12) for r in COLA]
    got = [r.replace("<pad>", "") for r in saved["responses"]]  # a batch pads finished rows
    assert got == [w.strip() for w in want] and all(w.strip() for w in want)
    assert saved["answers"] == ["acceptable", "unacceptable", "acceptable"]
    right = sum(p == a for p, a in zip(saved["predictions"], saved["answers"], strict=True))
    assert metrics["paper/cola/accuracy_pct"] == pytest.approx(100 * right / 3)
    assert metrics["paper/cola/n"] == 3
    assert ev.report["batch_size"] == 2 and ev.report["dataset"] == "nyu-mll/glue"


def test_an_unreachable_hub_is_one_line_and_exit_code_2_through_the_cli(tmp_path):
    save_tiny_model(tmp_path / "tiny")
    config = {"name": "e", "output_dir": str(tmp_path / "runs"),
              "model": {"source": str(tmp_path / "tiny"), "device": "cpu"},
              "tasks": [{"name": "c", "train": {"source": "bundled:capitals"},
                         "validation": {"source": "bundled:capitals", "split": "validation"}}],
              "evaluation": [{"name": "paper_tasks", "options": {"task": "mrpc", "limit": 2}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, LAYERIF_CACHE=str(tmp_path / "cache"), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "layerif_core.cli", "--quiet", "eval", "c.yaml"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "'nyu-mll/glue', config 'mrpc', split 'test'" in lines[0] and "data_files" in lines[0]


def test_a_tokenizer_without_a_pad_token_pads_with_eos_and_is_left_as_it_was(tmp_path, cola_file):
    tok = printable_tokenizer()
    model = tiny_model("llama", vocab_size=len(VOCAB), max_position_embeddings=1024)
    ctx = make_ctx(tmp_path, model=model)
    opts = {"task": "cola", "data_files": cola_file, "max_new_tokens": 6, "batch_size": 3}
    with_pad = get_registry().build("evaluator", "paper_tasks", opts).evaluate(ctx, model, tok)
    tok.pad_token = None
    without = get_registry().build("evaluator", "paper_tasks", opts).evaluate(ctx, model, tok)
    assert without == with_pad
    assert tok.pad_token is None and tok.padding_side == "right"
