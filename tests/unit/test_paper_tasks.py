"""The paper's five tasks (`paper:<task>`): hand-written records in each hub dataset's schema, written
to local files by the test (no hub), rendered as the authors' data files render them."""

from __future__ import annotations

import json

import pytest

from conftest import char_tokenizer
from layerif_core.config import DataSpec
from layerif_core.data import load_records, tokenize_split
from layerif_core.errors import DataError
from layerif_eval.harness import hub_offline

ALPACA_HEAD = ("Below is an instruction that describes a task. Write a response that appropriately "
               "completes the request.\n\n### Instruction:\n")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def records(source, split, files):
    return load_records(DataSpec(source=source, split=split, data_files=files))


def test_mrpc_label_1_is_equivalent_and_0_not_equivalent(tmp_path):
    rows = [{"sentence1": "A cat sat.", "sentence2": "A cat was sitting.", "label": 1, "idx": 0},
            {"sentence1": "It rained.", "sentence2": "It was sunny.", "label": 0, "idx": 1}]
    got = records("paper:mrpc", "test", write_parquet(tmp_path / "mrpc.parquet", rows))
    instr = ("Tell me if the statements equivalent, not equivalent.\nSentence 1: A cat sat.\n"
             "Sentence 2: A cat was sitting.\n")
    assert got[0] == {"instruction": instr, "input": "", "output": "Answer: equivalent.",
                      "answer": "equivalent", "text": instr + " Answer: equivalent.",
                      "alpaca": ALPACA_HEAD + instr + "\n\n### Response:\n"}
    assert (got[1]["answer"], got[1]["output"]) == ("not equivalent", "Answer: not equivalent.")


def test_cola_label_0_is_unacceptable(tmp_path):
    rows = [{"sentence": "Him went home.", "label": 0, "idx": 0},
            {"sentence": "She went home.", "label": 1, "idx": 1}]
    got = records("paper:cola", "test", write_parquet(tmp_path / "cola.parquet", rows))
    assert got[0]["instruction"] == ("Tell me if the statement unacceptable, acceptable.\n"
                                     "Sentence: Him went home.\n")
    assert [r["answer"] for r in got] == ["unacceptable", "acceptable"]
    assert got[0]["text"] == got[0]["instruction"] + " Answer: unacceptable."


def test_commonsense_qa_lists_options_with_their_letters_and_answers_the_key(tmp_path):
    rows = [{"id": "x1", "question": "Where do fish live?", "question_concept": "fish",
             "choices": {"label": ["A", "B", "C", "D", "E"],
                         "text": ["tree", "water", "sky", "desert", "car"]}, "answerKey": "B"}]
    got = records("paper:commonsense_qa", "test", write_jsonl(tmp_path / "csqa.jsonl", rows))
    assert got[0]["instruction"] == ("Question: Where do fish live?\nOptions: (A) tree (B) water "
                                     "(C) sky (D) desert (E) car\n")
    assert (got[0]["answer"], got[0]["output"]) == ("B", "Answer: The answer is B.")


def test_openbookqa_reads_the_question_stem(tmp_path):
    rows = [{"id": "7-1", "question_stem": "The sun is responsible for",
             "choices": {"text": ["rain", "plants growing", "tides", "snow"],
                         "label": ["A", "B", "C", "D"]}, "answerKey": "B"}]
    got = records("paper:openbookqa", "test", write_parquet(tmp_path / "obqa.parquet", rows))
    assert got[0]["instruction"] == ("Question: The sun is responsible for\nOptions: (A) rain "
                                     "(B) plants growing (C) tides (D) snow\n")
    assert got[0]["output"] == "Answer: The answer is B."


def test_scienceqa_keeps_text_only_records_letters_the_answer_index_and_fills_an_empty_hint(tmp_path):
    base = {"task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "t",
            "category": "c", "skill": "s", "lecture": "", "solution": ""}
    rows = [dict(base, image=None, question="Which is a mammal?", choices=["trout", "otter"],
                 answer=1, hint=""),
            dict(base, image={"bytes": None, "path": "fig.png"}, question="Look at the picture.",
                 choices=["a", "b", "c"], answer=0, hint=""),
            dict(base, image=None, question="Which is warmer?", choices=["ice", "tea", "snow"],
                 answer=1, hint="A cup of tea is 60 C.")]
    got = records("paper:scienceqa", "test", write_jsonl(tmp_path / "sqa.jsonl", rows))
    assert len(got) == 2  # the record with an image is not text-only
    assert got[0]["instruction"] == ("Context: N/A\nQuestion: Which is a mammal?\n"
                                     "Options: (A) trout (B) otter\n")
    assert got[0]["answer"] == "B"
    assert got[1]["instruction"].startswith("Context: A cup of tea is 60 C.\nQuestion: Which is warmer?")
    assert got[1]["output"] == "Answer: The answer is B."


def test_train_and_validation_are_the_first_300_and_50_records_of_their_splits(tmp_path):
    rows = [{"sentence": f"Sentence number {k}.", "label": k % 2, "idx": k} for k in range(320)]
    path = write_parquet(tmp_path / "cola.parquet", rows)
    train = records("paper:cola", "train", path)
    assert [r["instruction"].split("Sentence: ")[1] for r in train] == [
        f"Sentence number {k}.\n" for k in range(300)]
    assert len(records("paper:cola", "validation", path)) == 50
    assert len(records("paper:cola", "test", path)) == 320
    assert [r["answer"] for r in records("paper:cola", "train_full", path)] == [
        ("unacceptable", "acceptable")[k % 2] for k in range(320)]  # the whole split, LoRA-MoE's
    with pytest.raises(DataError, match="has 40 usable records, fewer than the paper's 300"):
        records("paper:cola", "train", write_parquet(tmp_path / "short.parquet", rows[:40]))


def test_the_default_template_is_the_authors_influence_text_with_every_token_in_the_loss(tmp_path):
    rows = [{"sentence": "She went home.", "label": 1, "idx": 0}]
    spec = DataSpec(source="paper:cola", split="test", data_files=write_parquet(tmp_path / "c.parquet", rows))
    tok = char_tokenizer()
    split = tokenize_split(spec, tok)
    text = ("Tell me if the statement unacceptable, acceptable.\nSentence: She went home.\n"
            " Answer: acceptable.")
    assert split.input_ids == [tok(text, add_special_tokens=False)["input_ids"]]
    assert split.labels == split.input_ids


def test_an_unlabelled_record_and_an_unknown_task_are_errors_that_name_the_fix(tmp_path):
    path = write_parquet(tmp_path / "cola.parquet", [{"sentence": "x", "label": -1, "idx": 0}])
    with pytest.raises(DataError, match="has no label"):
        records("paper:cola", "test", path)
    with pytest.raises(DataError, match="no paper task 'rte'; the paper's tasks are paper:mrpc"):
        records("paper:rte", "test", path)
    with pytest.raises(DataError, match="does not have the schema of nyu-mll/glue"):
        records("paper:mrpc", "test", path)


def test_an_unreachable_hub_is_one_line_naming_the_dataset_and_data_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with hub_offline(True), pytest.raises(DataError) as err:
        load_records(DataSpec(source="paper:openbookqa", split="validation"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "'allenai/openbookqa', config 'main', split 'validation'" in msg
    assert "set data_files: FILE.parquet" in msg


def test_plans_know_the_sizes_of_the_paper_splits_without_the_hub():
    from layerif_core.estimates import split_size

    assert split_size(DataSpec(source="paper:mrpc", split="train", max_length=128)) == (300, 128, "")
    assert split_size(DataSpec(source="paper:scienceqa", split="validation", max_length=128))[0] == 50
    assert split_size(DataSpec(source="paper:cola", split="test", max_length=64))[0] == 1043
    assert split_size(DataSpec(source="paper:mrpc", split="train_full", max_length=256))[0] == 3668
    assert split_size(DataSpec(source="paper:cola", split="test", limit=100, max_length=64))[0] == 100


def test_the_paper_evaluation_is_planned_as_generation_over_the_test_split(tmp_path):
    import torch

    from conftest import make_config
    from layerif_core.estimates import Workload
    from layerif_core.registry import get_registry
    from layerif_core.testing import tiny_model

    work = Workload(config=make_config(tmp_path), model=tiny_model(), dtype=torch.float32)
    ev = get_registry().build("evaluator", "paper_tasks", {"task": "openbookqa"})
    cost = ev.estimate(work)
    assert cost.bytes_read == 500 * 128 * work.weights()  # every new token reads the weights once
