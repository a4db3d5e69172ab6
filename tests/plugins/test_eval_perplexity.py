"""The perplexity evaluator equals exp of the mean token loss, computed here independently."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.errors import ConfigError, DataError
from layerif_core.registry import get_registry
from layerif_core.tasks import bundled_records


def shipped_wikitext2_test() -> str:
    """The bundled WikiText-2 test split as packaged, read here with gzip (not through layerif)."""
    import gzip
    from importlib import resources

    raw = resources.files("layerif_core.tasks").joinpath("wikitext2", "test.txt.gz").read_bytes()
    return gzip.decompress(raw).decode("utf-8")


def sample_text(n: int = 12) -> str:
    return "\n\n".join(f"{r['question']} {r['answer']}." for r in bundled_records("capitals", "test", n=n))


def perplexity(ctx, **options) -> dict[str, float]:
    evaluator = get_registry().build("evaluator", "perplexity", options)
    return evaluator.evaluate(ctx, ctx.model, ctx.tokenizer)


@torch.no_grad()
def token_nll(model, ids: list[int], begin: int, t: int) -> float:
    """-log p(ids[t] | ids[begin:t]) from one forward pass over the context alone."""
    logits = model(input_ids=torch.tensor([ids[begin:t]])).logits[0, -1].double()
    return float(-torch.log_softmax(logits, dim=-1)[ids[t]])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_non_overlapping_windows_equal_exp_mean_token_loss(tmp_path, batch_size):
    ctx = make_ctx(tmp_path)
    text = sample_text()
    (tmp_path / "t.txt").write_text(text)
    got = perplexity(ctx, source=str(tmp_path / "t.txt"), seqlen=32, batch_size=batch_size)

    ids = ctx.tokenizer(text)["input_ids"]
    n_windows = len(ids) // 32  # the trailing partial window is dropped, as in the literature
    losses = []
    for w in range(n_windows):
        x = torch.tensor([ids[w * 32:(w + 1) * 32]])
        logp = torch.log_softmax(ctx.model(input_ids=x).logits[0, :-1].double(), dim=-1)
        losses += (-logp.gather(1, x[0, 1:, None])[:, 0]).tolist()
    assert got["perplexity/t/tokens"] == len(losses) == n_windows * 31
    assert got["perplexity/t/windows"] == n_windows
    assert got["perplexity/t"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_strided_windows_score_every_token_once_with_its_window_context(tmp_path):
    ctx = make_ctx(tmp_path)
    text = sample_text(4)
    (tmp_path / "t.txt").write_text(text)
    seqlen, stride = 24, 8
    got = perplexity(ctx, source=str(tmp_path / "t.txt"), seqlen=seqlen, stride=stride,
                     drop_last=False, batch_size=2)

    ids = ctx.tokenizer(text)["input_ids"]
    # token t is scored in the first window [k*stride, k*stride + seqlen) that contains it
    losses = []
    for t in range(1, len(ids)):
        k = max(0, math.ceil((t + 1 - seqlen) / stride))
        losses.append(token_nll(ctx.model, ids, k * stride, t))
    assert got["perplexity/t/tokens"] == len(ids) - 1
    assert got["perplexity/t"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_dataset_records_are_joined_with_blank_lines(tmp_path):
    ctx = make_ctx(tmp_path)
    records = [{"text": f"{r['question']} {r['answer']}."} for r in bundled_records("capitals", "test", n=8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "d.txt").write_text("\n\n".join(r["text"] for r in records))
    from_records = perplexity(ctx, source=str(tmp_path / "d.jsonl"), split="train", seqlen=32, name="x")
    from_text = perplexity(ctx, source=str(tmp_path / "d.txt"), seqlen=32, name="x")
    assert from_records == from_text


def test_default_window_is_the_model_context(tmp_path):
    ctx = make_ctx(tmp_path)  # tiny models have a context of 128 tokens
    (tmp_path / "t.txt").write_text(sample_text(20))
    ev = get_registry().build("evaluator", "perplexity", {"source": str(tmp_path / "t.txt")})
    got = ev.evaluate(ctx, ctx.model, ctx.tokenizer)
    assert ev.report["seqlen"] == 128
    assert got["perplexity/t/tokens"] == got["perplexity/t/windows"] * 127


@pytest.mark.parametrize("text, options, error, words", [
    ("", {}, DataError, "empty"),
    ("  \n\n ", {}, DataError, "empty"),
    ("short text", {"seqlen": 64}, DataError, "less than one window"),
    ("some text", {"seqlen": 256}, ConfigError, "context of 128"),
    ("some text", {"seqlen": 8, "stride": 9}, ConfigError, "stride <= seqlen"),
])
def test_bad_input_is_one_clear_error(tmp_path, text, options, error, words):
    ctx = make_ctx(tmp_path)
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(error, match=words):
        perplexity(ctx, source=str(tmp_path / "t.txt"), **options)


def test_missing_text_file_is_reported(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        perplexity(ctx, source=str(tmp_path / "nope.txt"))


def test_bundled_wikitext2_is_read_as_its_file(tmp_path):
    """source 'bundled:wikitext2' (first 30 lines) scores exactly what the same lines in a .txt do."""
    ctx = make_ctx(tmp_path)
    (tmp_path / "w.txt").write_text("".join(shipped_wikitext2_test().splitlines(keepends=True)[:30]))
    bundled = perplexity(ctx, source="bundled:wikitext2", split="test", limit=30, seqlen=64)
    file = perplexity(ctx, source=str(tmp_path / "w.txt"), seqlen=64)
    assert bundled["perplexity/wikitext2/tokens"] == file["perplexity/w/tokens"] > 0
    assert bundled["perplexity/wikitext2"] == file["perplexity/w"]


def test_evaluator_leaves_the_model_in_training_mode_if_it_was(tmp_path):
    model = tiny_model()
    model.train()
    ctx = make_ctx(tmp_path, model=model)
    (tmp_path / "t.txt").write_text(sample_text(4))
    perplexity(ctx, source=str(tmp_path / "t.txt"), seqlen=32)
    assert model.training


@pytest.mark.slow
def test_smollm2_wikitext_perplexity_matches_independent_computation(tmp_path, smollm2):
    model, tokenizer = smollm2
    ctx = make_ctx(tmp_path, model=model)
    ctx.tokenizer = tokenizer
    text = "".join(shipped_wikitext2_test().splitlines(keepends=True)[:40])  # the first 40 lines
    got = perplexity(ctx, source="bundled:wikitext2", split="test", limit=40, name="wiki", seqlen=128,
                     max_windows=3, batch_size=3)

    ids = tokenizer(text)["input_ids"]
    losses = []
    with torch.no_grad():
        for w in range(3):
            x = torch.tensor([ids[w * 128:(w + 1) * 128]])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
            losses += (-logp.gather(1, x[0, 1:, None])[:, 0]).tolist()
    want = math.exp(sum(losses) / len(losses))
    assert got["perplexity/wiki/tokens"] == 3 * 127
    assert got["perplexity/wiki"] == pytest.approx(want, rel=1e-4)
    assert got["perplexity/wiki"] < 0.01 * len(tokenizer)  # a trained model, far from uniform
