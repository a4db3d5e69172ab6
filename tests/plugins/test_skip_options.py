"""``skip`` of the perplexity evaluator and of the prune calibration: records ``[skip, skip + limit)``,
so that held-out text can come from the calibration's split without overlapping it."""

from __future__ import annotations

from layerif_core.tasks import corpus_text
from layerif_core.testing import char_tokenizer
from layerif_eval.options import PerplexityOptions
from layerif_eval.perplexity import read_text
from layerif_prune.calibration import calibration_tokens
from layerif_prune.options import CalibrationSpec


def lines(start: int, stop: int) -> str:
    return "\n".join(corpus_text("wikitext2", "validation").split("\n")[start:stop]) + "\n"


def test_perplexity_reads_limit_lines_after_skip():
    opts = PerplexityOptions(source="bundled:wikitext2", split="validation", skip=5, limit=3)
    assert read_text(opts) == lines(5, 8)


def test_calibration_reads_limit_lines_after_skip():
    tok = char_tokenizer()
    spec = CalibrationSpec(source="bundled:wikitext2", split="validation", skip=5, limit=3)
    tokens, _ = calibration_tokens(spec, tok, None)
    assert tokens.tolist() == tok(lines(5, 8), add_special_tokens=False)["input_ids"]
