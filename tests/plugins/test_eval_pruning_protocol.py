"""The pruning literature's protocol preset (examples/presets/pruning_protocol.yaml): it states the
protocol of the LayerIF paper's pruning runs (seven zero-shot tasks, WikiText-2 at 2048, C4 shard
00000 calibration 128 x 2048, AlphaPruning's map with epsilon 0.1 at 50%) and, with local stand-ins
for the hub's data, runs offline on a tiny model and records what its numbers depend on (lm-eval's
version, each task's version, the batch size)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import char_tokenizer, make_ctx
from layerif_core.config import ComponentSpec, load_config
from layerif_core.evaluation import check_specs, evaluate_model
from layerif_core.registry import get_registry
from layerif_core.testing import tiny_model
from layerif_prune.calibration import calibration_tokens, calibration_windows

PRESET = Path(__file__).parents[2] / "examples" / "presets" / "pruning_protocol.yaml"
SEVEN = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


@pytest.fixture(scope="module")
def preset():
    return load_config(PRESET, [])


def test_the_preset_is_the_papers_protocol(preset):
    check_specs(preset.evaluation)  # every evaluator option is valid
    by_name = {spec.name: spec.options for spec in preset.evaluation}
    assert by_name["lm_eval"]["tasks"] == SEVEN and by_name["lm_eval"]["num_fewshot"] == 0
    assert by_name["lm_eval"]["batch_size"] == 8
    ppl = by_name["perplexity"]
    assert (ppl["config_name"], ppl["split"], ppl["seqlen"]) == ("wikitext-2-raw-v1", "test", 2048)
    assert "limit" not in ppl and "max_windows" not in ppl  # the whole test split
    opts = get_registry().get("application", "prune").options(preset.application.options)
    cal = opts.calibration
    assert (cal.source, cal.data_files) == ("allenai/c4", "en/c4-train.00000-of-01024.json.gz")
    assert (cal.samples, cal.seqlen) == (128, 2048)
    assert preset.allocation.options == {"sparsity": 0.5, "epsilon": 0.1, "overflow": "clip"}


def test_calibration_reads_a_c4_shard_through_data_files(preset, tmp_path):
    """The C4 shard's format (gzipped json lines: text, timestamp, url), read with the preset's own
    calibration spec; only the dataset (the `json` loader instead of the hub's allenai/c4) changes."""
    docs = [f"Document {k} says that the river runs to the sea and back again." for k in range(400)]
    shard = tmp_path / "c4-train.00000-of-01024.json.gz"
    with gzip.open(shard, "wt") as f:
        for k, text in enumerate(docs):
            f.write(json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z",
                                "url": f"https://example.org/{k}"}) + "\n")
    opts = get_registry().get("application", "prune").options(preset.application.options)
    spec = opts.calibration.model_copy(update={"source": "json", "data_files": str(shard)})
    tok = char_tokenizer()
    tokens, _ = calibration_tokens(spec, tok, None)
    assert tokens.tolist() == tok("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    windows = calibration_windows(tokens, spec.samples, spec.seqlen, seed=0)
    assert tuple(windows.shape) == (128, 2048)


def test_the_evaluation_list_runs_offline_and_records_versions_and_batch_size(preset, tmp_path):
    text = tmp_path / "wikitext2_test.txt"
    text.write_text(" ".join(f"word{k % 97} is here." for k in range(900)))  # > 2 windows of 2048
    specs = []
    for spec in preset.evaluation:  # stand-ins for the hub's data, every other option kept
        opts = dict(spec.options)
        if spec.name == "lm_eval":
            opts.update(tasks=["layerif_capitals", "layerif_antonyms"], limit=3)
        else:
            opts.update(source=str(text), config_name=None)
        specs.append(ComponentSpec(name=spec.name, options=opts))
    model = tiny_model("llama", max_position_embeddings=2048)
    ctx = make_ctx(tmp_path, model=model)
    report = evaluate_model(ctx, specs=specs)
    saved = json.loads(report.path.read_text())
    lm = next(e for e in saved["evaluators"] if e["name"] == "lm_eval")
    assert lm["lm_eval_version"] not in ("", "unknown") and lm["batch_size"] == 8
    assert lm["num_fewshot"] == 0
    assert {t: v["version"] for t, v in lm["tasks"].items()} == {"layerif_capitals": 1.0,
                                                                 "layerif_antonyms": 1.0}
    n_tokens = len(ctx.tokenizer(text.read_text())["input_ids"])
    assert saved["metrics"]["perplexity/wikitext2/windows"] == n_tokens // 2048
    table = ctx.run_dir.file("metrics.md").read_text()
    assert "| layerif_capitals | 1.0 | 0 | 3 of 100 |" in table
