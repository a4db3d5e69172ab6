"""Data loading: local formats, templates and answer masking, truncation, bundled tasks, bad input."""

from __future__ import annotations

import json

import pytest

from conftest import char_tokenizer
from layerif_core.config import DataSpec
from layerif_core.data import IGNORE, load_records, tokenize_split
from layerif_core.errors import DataError
from layerif_core.tasks import BUNDLED, bundled_records

ROWS = [{"q": "ab", "a": "cd"}, {"q": "e", "a": "fg"}]


def write(tmp_path, fmt: str):
    import pandas as pd

    path = tmp_path / f"d.{fmt}"
    df = pd.DataFrame(ROWS)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_formats_read_the_same_records(tmp_path, fmt):
    assert load_records(DataSpec(source=str(write(tmp_path, fmt)))) == ROWS


def test_txt_file_gives_one_record_per_line(tmp_path):
    (tmp_path / "t.txt").write_text("hello\nworld\n")
    assert [r["text"] for r in load_records(DataSpec(source=str(tmp_path / "t.txt")))] == ["hello", "world"]


def test_prompt_tokens_are_masked_and_completion_counted(tmp_path):
    tok = char_tokenizer()
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{q}:", completion="{a}", add_eos=True)
    split = tokenize_split(spec, tok)
    assert tok.decode(split.input_ids[0]).replace(" ", "") == "ab:cd<eos>"
    assert split.labels[0][:3] == [IGNORE] * 3
    assert split.labels[0][3:] == split.input_ids[0][3:]


def test_loss_on_all_counts_prompt_tokens(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{q}:", completion="{a}", loss_on="all")
    split = tokenize_split(spec, char_tokenizer())
    assert split.labels[0] == split.input_ids[0]


def test_fingerprint_follows_the_tokens_not_the_path(tmp_path):
    """The same examples read from another file (or format) reuse cached factors; other masks or
    other text do not."""
    tok = char_tokenizer()
    (tmp_path / "copy").mkdir()
    jsonl, csv = write(tmp_path, "jsonl"), write(tmp_path / "copy", "csv")

    def fp(path, **kw) -> str:
        spec = DataSpec(source=str(path), prompt="{q}:", completion="{a}", **kw)
        return tokenize_split(spec, tok).fingerprint

    assert fp(jsonl) == fp(csv)
    assert fp(jsonl) != fp(jsonl, loss_on="all")  # same tokens, other labels
    assert fp(jsonl) != fp(jsonl, add_eos=True)


def test_truncation_is_counted(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), text="{q}{a}{a}{a}", max_length=7)
    split = tokenize_split(spec, char_tokenizer())
    assert split.n_truncated == 1 and [len(x) for x in split.input_ids] == [7, 7]


def test_missing_template_field_names_the_fields(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{question}", completion="{a}")
    with pytest.raises(DataError, match=r"lacks field\(s\) \['question'\].*fields are \['a', 'q'\]"):
        tokenize_split(spec, char_tokenizer())


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(DataSpec(source=str(tmp_path / "none.jsonl")))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_records(DataSpec(source=str(tmp_path / "e.jsonl")))


def test_max_length_beyond_model_context_is_rejected(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), max_length=512)
    with pytest.raises(DataError, match="exceeds the model's context of 128"):
        tokenize_split(spec, char_tokenizer(), max_context=128)


def test_answer_lost_to_truncation_is_an_error(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{q}{q}{q}", completion="{a}", max_length=3)
    with pytest.raises(DataError, match="no token in the loss"):
        tokenize_split(spec, char_tokenizer())


def test_bundled_tasks_are_deterministic_and_splits_differ():
    for task in BUNDLED:
        a = bundled_records(task, "train", seed=0)
        assert a == bundled_records(task, "train", seed=0) and len(a) == 300
        assert a != bundled_records(task, "train", seed=1)
        assert a[:50] != bundled_records(task, "validation", seed=0)[:50]
        for r in a[:20]:
            assert r["choices"][r["label"]] == r["answer"] and len(set(r["choices"])) == 4


def test_bundled_arithmetic_answers_are_correct():
    import re

    for r in bundled_records("arithmetic", "validation"):
        nums = [int(x) for x in re.findall(r"\d+", r["question"])]
        q = r["question"]
        want = (nums[0] + nums[1] if "more. How" in q else nums[0] - nums[1] if "gives away" in q
                else nums[0] * nums[1] if "bags" in q else nums[0] + nums[1] - nums[2])
        assert int(r["answer"]) == want, q


def test_unknown_bundled_task_lists_the_known_ones():
    with pytest.raises(DataError, match="bundled tasks: arithmetic, capitals, antonyms"):
        load_records(DataSpec(source="bundled:nope"))
