"""Data loading: local formats, templates and answer masking, truncation, bundled tasks, the bundled
WikiText-2, skipping records with no token in the loss, packing into windows, bad input."""

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


def test_answer_lost_to_truncation_in_every_example_is_an_error(tmp_path):
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{q}{q}{q}", completion="{a}", max_length=3)
    with pytest.raises(DataError, match="every one of the 2 examples .* no token in the loss"):
        tokenize_split(spec, char_tokenizer())


def test_example_whose_answer_is_lost_to_truncation_is_skipped(tmp_path, caplog):
    # 'abab'+'cd' -> 'abab' (nothing of the answer left); 'ee'+'fg' fits in 4 tokens
    spec = DataSpec(source=str(write(tmp_path, "jsonl")), prompt="{q}{q}", completion="{a}", max_length=4)
    split = tokenize_split(spec, char_tokenizer())
    assert (len(split), split.n_skipped, split.n_truncated) == (1, 1, 1)
    assert split.records == [ROWS[1]]
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"'{spec.source}' (split 'train'): skipped 1 of 2 examples with no token in the loss (blank, "
        "or too short after truncation to 4 tokens)"]


def test_bundled_tasks_are_deterministic_and_splits_differ():
    for task in BUNDLED:
        a = bundled_records(task, "train", seed=0)
        assert a == bundled_records(task, "train", seed=0) and len(a) == 300
        assert a != bundled_records(task, "train", seed=1)
        assert a[:50] != bundled_records(task, "validation", seed=0)[:50]
        for r in a[:20]:
            assert r["choices"][r["label"]] == r["answer"] and len(set(r["choices"])) == 4


def arithmetic_answer(question: str) -> int:
    """The answer of a bundled arithmetic question, read from its words (not from the generator)."""
    import re

    n = [int(x) for x in re.findall(r"\d+", question)]
    if re.search(r"has \d+ \w+ and gets \d+ more\. How many", question):
        return n[0] + n[1]
    if re.search(r"has \d+ \w+ and gives away \d+\. How many \w+ are left", question):
        return n[0] - n[1]
    if re.search(r"buys \d+ bags with \d+ \w+ in each", question):
        return n[0] * n[1]
    assert re.search(r"has \d+ \w+, finds \d+ more and then loses \d+\.", question), question
    return n[0] + n[1] - n[2]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_arithmetic_answer_follows_from_its_question_and_is_not_negative(split):
    # seed 3's validation split once asked "has 2, finds 2 more and then loses 9": answer -5
    for seed in range(5):
        for r in bundled_records("arithmetic", split, seed=seed, n=2000):
            assert int(r["answer"]) == arithmetic_answer(r["question"]) >= 0, r["question"]
            assert all(int(c) >= 0 for c in r["choices"]), r


def test_arithmetic_gives_2000_distinct_test_and_500_validation_questions_per_seed_by_seed():
    for seed in range(3):
        test = bundled_records("arithmetic", "test", seed=seed, n=2000)
        val = bundled_records("arithmetic", "validation", seed=seed, n=500)
        assert len({r["question"] for r in test}) == 2000 and len({r["question"] for r in val}) == 500
        assert test == bundled_records("arithmetic", "test", seed=seed, n=2000)
        assert test[:100] == bundled_records("arithmetic", "test", seed=seed)  # the default is a prefix
    assert bundled_records("arithmetic", "test", seed=0, n=50) != bundled_records("arithmetic", "test",
                                                                                   seed=1, n=50)


def test_arithmetic_splits_share_no_question_across_seeds():
    questions = {split: [{r["question"] for r in bundled_records("arithmetic", split, seed=s, n=n)}
                         for s in range(5)]
                 for split, n in (("train", 300), ("validation", 500), ("test", 2000))}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        for qa in questions[a]:
            for qb in questions[b]:
                assert not qa & qb, (a, b)


def test_a_limit_beyond_the_default_size_generates_that_many_records():
    spec = DataSpec(source="bundled:arithmetic", split="validation", limit=500)
    assert load_records(spec) == bundled_records("arithmetic", "validation", n=500)
    skipped = load_records(DataSpec(source="bundled:arithmetic", split="test", skip=100, limit=20))
    assert skipped == bundled_records("arithmetic", "test", n=120)[100:]
    with pytest.raises(DataError, match="at most 20000 records per split.*lower limit"):
        load_records(DataSpec(source="bundled:arithmetic", split="test", limit=20_001))


@pytest.mark.parametrize("task", sorted(BUNDLED))
def test_every_seed_generates_four_distinct_choices_with_the_answer(task):
    for seed in range(40):
        for split in ("train", "validation", "test"):
            for r in bundled_records(task, split, seed=seed):
                assert len(set(r["choices"])) == 4 and r["choices"][r["label"]] == r["answer"]


def test_unknown_bundled_task_lists_the_known_ones():
    with pytest.raises(DataError, match="bundled tasks: arithmetic, capitals, antonyms"):
        load_records(DataSpec(source="bundled:nope"))


# ---- the bundled WikiText-2 --------------------------------------------------------------------

def shipped_lines(split: str) -> list[str]:
    """The lines of the packaged file, read here with gzip directly (not through layerif)."""
    import gzip
    from importlib import resources

    raw = resources.files("layerif_core.tasks").joinpath("wikitext2", f"{split}.txt.gz").read_bytes()
    return gzip.decompress(raw).decode("utf-8").splitlines()


def char_count(line: str) -> int:
    """Tokens of ``line`` under the char tokenizer: one per character, the literal '<unk>' one."""
    return len(line.replace("<unk>", "?"))


@pytest.mark.parametrize(("split", "n_lines"), [("validation", 3760), ("test", 4358)])
def test_bundled_wikitext2_is_the_word_level_text_as_shipped(split, n_lines):
    records = load_records(DataSpec(source="bundled:wikitext2", split=split))
    lines = shipped_lines(split)
    assert len(lines) == n_lines  # the line counts of WikiText-2's wiki.valid.tokens / wiki.test.tokens
    assert records == [{"text": x} for x in lines]
    assert lines[0] == " " and lines[1].startswith(" = ") and any("<unk>" in x for x in lines)


def test_bundled_wikitext2_reads_as_the_same_text_in_a_txt_file(tmp_path):
    """The same lines from a .txt file on disk (datasets' text loader) give the same records."""
    lines = shipped_lines("validation")[:300]
    (tmp_path / "w.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_records(DataSpec(source=str(tmp_path / "w.txt"))) == load_records(
        DataSpec(source="bundled:wikitext2", split="validation", limit=300))


def test_bundled_text_is_the_file_and_stops_at_the_limit():
    from layerif_core.data import bundled_text

    lines = shipped_lines("test")
    assert bundled_text(DataSpec(source="bundled:wikitext2", split="test")) == "\n".join(lines) + "\n"
    assert bundled_text(DataSpec(source="bundled:wikitext2", split="test", limit=5)) == "".join(
        x + "\n" for x in lines[:5])
    assert bundled_text(DataSpec(source="bundled:capitals")) is None


def test_wikitext2_has_no_train_split_and_the_error_names_its_splits():
    with pytest.raises(DataError, match=r"text corpora: wikitext2 \(splits validation, test\)"):
        load_records(DataSpec(source="bundled:wikitext2", split="train"))


def test_blank_lines_of_wikitext2_are_skipped_and_counted_once(caplog):
    lines = shipped_lines("validation")
    blank = sum(1 for x in lines if not x.strip())
    split = tokenize_split(DataSpec(source="bundled:wikitext2", split="validation", max_length=4096,
                                    add_eos=True), char_tokenizer())
    assert blank == 1299 and split.n_skipped == blank and len(split) == len(lines) - blank
    assert split.n_truncated == sum(1 for x in lines if x.strip() and char_count(x) + 1 > 4096)
    assert [r["text"] for r in split.records] == [x for x in lines if x.strip()]
    assert split.input_ids[0] == char_tokenizer()(lines[1], add_special_tokens=False)["input_ids"] + [1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"skipped {blank} of {len(lines)} examples" in warnings[0]


@pytest.mark.slow
def test_wikitext2_with_the_smollm2_tokenizer_skips_blank_and_one_token_lines(smollm2):
    _, tok = smollm2
    lines = shipped_lines("test")[:600]
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in lines]
    want_skipped = sum(1 for x, i in zip(lines, ids, strict=True) if not x.strip() or len(i) < 2)
    split = tokenize_split(DataSpec(source="bundled:wikitext2", split="test", limit=600,
                                    max_length=2048), tok)
    assert split.n_skipped == want_skipped >= sum(1 for x in lines if not x.strip()) > 0
    assert split.input_ids == [i[:2048] for x, i in zip(lines, ids, strict=True)
                               if x.strip() and len(i) >= 2]


def test_a_txt_file_starting_with_a_blank_line_is_data(tmp_path):
    """The first line blank: skipped, not an error; the manifest's data section records the count."""
    from conftest import make_ctx
    from layerif_core.pipeline import load_task_splits

    (tmp_path / "t.txt").write_text("\n  \nhello world\n\nsecond line\nx\n")
    task = {"name": "txt", "train": {"source": str(tmp_path / "t.txt")},
            "validation": {"source": str(tmp_path / "t.txt")}}
    ctx = make_ctx(tmp_path, tasks=[task])
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    # blank: lines 1, 2, 4; 'x' is one token, never predicted: no token in the loss
    tok = char_tokenizer()
    assert train.input_ids == [tok(x, add_special_tokens=False)["input_ids"]
                               for x in ("hello world", "second line")]
    assert train.n_skipped == 4
    entry = ctx.run_dir.manifest["data"]["txt"]["txt/train"]
    assert (entry["examples"], entry["skipped"], entry["packed"]) == (2, 4, False)


def test_every_record_blank_is_one_error_naming_the_fix(tmp_path):
    (tmp_path / "t.txt").write_text("\n \n\n")
    with pytest.raises(DataError, match="every one of the 3 examples .* is blank .*; raise max_length"):
        tokenize_split(DataSpec(source=str(tmp_path / "t.txt")), char_tokenizer())


# ---- packing -----------------------------------------------------------------------------------

def test_packing_cuts_eos_separated_documents_into_full_windows(tmp_path):
    """'abc', 'defg' -> a b c <eos> d e f g <eos> (9 tokens): windows of 4 drop the last token."""
    (tmp_path / "t.txt").write_text("abc\n\ndefg\n")
    tok = char_tokenizer()
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    split = tokenize_split(DataSpec(source=str(tmp_path / "t.txt"), pack=True, max_length=4), tok)
    assert split.input_ids == [ids("abc") + [eos], ids("defg")]
    assert split.labels == split.input_ids and split.n_skipped == 1 and split.n_truncated == 0
    three = tokenize_split(DataSpec(source=str(tmp_path / "t.txt"), pack=True, max_length=3), tok)
    assert three.input_ids == [ids("abc"), [eos] + ids("de"), ids("fg") + [eos]]


def test_packing_bundled_wikitext2_with_the_char_tokenizer_gives_the_hand_counted_windows():
    lines = shipped_lines("validation")[:400]
    kept = [x for x in lines if x.strip()]
    # one token per character, '<unk>' (the char tokenizer's own unknown token) one, EOS after each line
    n_tokens = sum(char_count(x) + 1 for x in kept)
    tok = char_tokenizer()
    split = tokenize_split(DataSpec(source="bundled:wikitext2", split="validation", limit=400,
                                    pack=True, max_length=64), tok, max_context=128)
    assert len(split) == n_tokens // 64 and {len(x) for x in split.input_ids} == {64}
    assert split.n_skipped == len(lines) - len(kept)
    stream = [t for x in kept for t in tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert [t for x in split.input_ids for t in x] == stream[:len(split) * 64]
    assert split.labels == split.input_ids


@pytest.mark.slow
def test_packing_bundled_wikitext2_with_the_smollm2_tokenizer(smollm2):
    _, tok = smollm2
    lines = [x for x in shipped_lines("test")[:300] if x.strip()]
    stream = [t for x in lines for t in tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    split = tokenize_split(DataSpec(source="bundled:wikitext2", split="test", limit=300, pack=True,
                                    max_length=128), tok, max_context=8192)
    assert len(split) == len(stream) // 128 > 0
    assert split.input_ids == [stream[k * 128:(k + 1) * 128] for k in range(len(stream) // 128)]


def test_packing_needs_text_templates():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give a `text` template instead of prompt/completion"):
        DataSpec(source="x.jsonl", prompt="{q}", completion="{a}", pack=True)


def test_packing_a_bundled_task_joins_question_and_answer():
    tok = char_tokenizer()
    split = tokenize_split(DataSpec(source="bundled:capitals", limit=4, pack=True, max_length=16), tok)
    recs = bundled_records("capitals", "train")[:4]
    n_tokens = sum(len(f"Question: {r['question']}\nAnswer: {r['answer']}") + 1 for r in recs)
    assert len(split) == n_tokens // 16 > 0


def test_packing_less_text_than_one_window_is_an_error(tmp_path):
    (tmp_path / "t.txt").write_text("abc\n")
    with pytest.raises(DataError, match="packs into 4 tokens, fewer than one window of max_length 8"):
        tokenize_split(DataSpec(source=str(tmp_path / "t.txt"), pack=True, max_length=8), char_tokenizer())


def test_the_bundled_text_and_its_licence_are_package_data():
    """A wheel (and `pip install .`) carries every file of the wikitext2 folder: pyproject's
    package-data patterns match each of them."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["layerif_core.tasks"]
    folder = root / "layerif_core" / "tasks" / "wikitext2"
    files = sorted(f"wikitext2/{p.name}" for p in folder.iterdir())
    assert files == ["wikitext2/LICENSE", "wikitext2/README.md", "wikitext2/test.txt.gz",
                     "wikitext2/validation.txt.gz"]
    assert all(any(fnmatch(f, pat) for pat in patterns) for f in files)


def test_scorer_loss_sets_the_tokens_and_reduction_of_both_splits(tmp_path):
    """scorer.loss: tokens 'all' puts the prompt in the loss of train and validation (the LayerIF
    authors' labels = input_ids), and the reduction is part of the splits' fingerprints."""
    from conftest import make_ctx
    from layerif_core.pipeline import load_task_splits

    def splits(loss):
        ctx = make_ctx(tmp_path / str(len(loss)), scorer={"loss": loss})
        return load_task_splits(ctx, ctx.config.tasks[0])

    answer_only, _ = splits({})
    everything, query = splits({"tokens": "all"})
    mean, _ = splits({"tokens": "all", "reduction": "mean"})
    assert all(IGNORE in lab for lab in answer_only.labels)
    assert everything.labels == everything.input_ids and query.labels == query.input_ids
    assert mean.reduction == "mean" and everything.reduction == "sum"
    assert len({answer_only.fingerprint, everything.fingerprint, mean.fingerprint}) == 3


def test_skip_leaves_out_the_first_records_before_limit(tmp_path):
    every = load_records(DataSpec(source="bundled:wikitext2", split="validation", limit=30))
    part = load_records(DataSpec(source="bundled:wikitext2", split="validation", skip=10, limit=5))
    assert part == every[10:15]
    with pytest.raises(DataError, match="no more than skip"):
        load_records(DataSpec(source="bundled:capitals", skip=10_000))


def test_windows_keeps_the_first_packed_windows(tmp_path):
    spec = {"source": "bundled:wikitext2", "split": "validation", "pack": True, "max_length": 16,
            "limit": 40}
    every = tokenize_split(DataSpec(**spec), char_tokenizer())
    first = tokenize_split(DataSpec(**spec, windows=3), char_tokenizer())
    assert len(every) > 3 and first.input_ids == every.input_ids[:3]
    with pytest.raises(DataError, match="fewer than windows"):
        tokenize_split(DataSpec(**spec, windows=len(every) + 1), char_tokenizer())
    with pytest.raises(ValueError, match="set pack: true"):
        DataSpec(source="bundled:wikitext2", windows=3)


def test_authors_padding_pads_the_split_to_its_longest_with_eos_in_the_loss(tmp_path):
    """scorer.loss.padding: authors (the LayerIF authors' padding=True, pad = EOS, labels =
    input_ids): every example right-padded with EOS to the split's longest, each pad labelled EOS,
    and only the example's own tokens attended."""
    tok = char_tokenizer()
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abc", "de", "fghij"]))
    split = tokenize_split(DataSpec(source=str(path)), tok, padding="authors")
    eos = tok.eos_token_id
    own = [tok(t, add_special_tokens=False)["input_ids"] for t in ["abc", "de", "fghij"]]
    assert split.input_ids == [own[0] + [eos] * 2, own[1] + [eos] * 3, own[2]]
    assert split.labels == split.input_ids  # the pads predict EOS, in the loss
    assert split.attended == [3, 2, 5]
    batch = next(split.batches(3))
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5]
    assert batch.positions().tolist() == [[1] * 5] * 3
    assert batch.labels.tolist() == split.labels
    plain = tokenize_split(DataSpec(source=str(path)), tok)
    assert plain.attended is None and plain.input_ids == own
    assert plain.fingerprint != split.fingerprint


def test_authors_padding_truncates_to_128_unless_max_length_is_set(tmp_path):
    tok = char_tokenizer()
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": "a" * n}) + "\n" for n in (200, 50)))
    authors = tokenize_split(DataSpec(source=str(path)), tok, padding="authors")
    assert [len(x) for x in authors.input_ids] == [128, 128] and authors.attended == [128, 50]
    assert authors.n_truncated == 1
    assert [len(x) for x in tokenize_split(DataSpec(source=str(path)), tok).input_ids] == [200, 50]
    short = tokenize_split(DataSpec(source=str(path), max_length=60), tok, padding="authors")
    assert short.attended == [60, 50] and [len(x) for x in short.input_ids] == [60, 60]


def test_authors_padding_keeps_the_prompt_mask_and_subsets_keep_the_attended_lengths(tmp_path):
    tok = char_tokenizer()
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    split = tokenize_split(DataSpec(source=str(path), prompt="{q}", completion="{a}"), tok,
                           padding="authors")
    eos = tok.eos_token_id
    assert split.labels == [[IGNORE] * 2 + split.input_ids[0][2:], [IGNORE] + split.input_ids[1][1:3] + [eos]]
    assert split.subset([1]).attended == [3]
    assert next(split.subset([1]).batches(1)).attention_mask.tolist() == [[1, 1, 1, 0]]


def test_authors_padding_without_an_eos_token_names_the_fix(tmp_path):
    tok = char_tokenizer()
    tok.eos_token = None
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "abc"}) + "\n")
    with pytest.raises(DataError, match="padding: none"):
        tokenize_split(DataSpec(source=str(path)), tok, padding="authors")


def test_authors_padding_leaves_packed_windows_as_they_are(tmp_path):
    tok = char_tokenizer()
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij\nklmnopqrstu\nvwxyz\n" * 20)
    spec = DataSpec(source=str(path), pack=True)
    packed = tokenize_split(spec, tok, max_context=200, padding="authors")
    assert packed.attended is None
    assert packed.input_ids == tokenize_split(spec, tok, max_context=200).input_ids
    assert {len(w) for w in packed.input_ids} == {200}
