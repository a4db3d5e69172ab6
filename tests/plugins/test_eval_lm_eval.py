"""lm-eval multiple-choice tasks over local jsonl run end to end on in-memory models; the accuracy is
the fraction of items whose correct choice has the highest log-likelihood, computed here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_ctx
from layerif_core.errors import ConfigError, DataError
from layerif_core.registry import get_registry
from layerif_core.tasks import bundled_records

PROMPT = "Question: {question}\nAnswer:"


def write_task(folder: Path, records: list[dict], name: str = "local_mc", version: float = 2.0,
               **overrides) -> Path:
    """A multiple-choice task YAML over a jsonl file, both under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}}, "output_type": "multiple_choice",
            "test_split": "test", "doc_to_text": PROMPT.replace("{question}", "{{question}}"),
            "doc_to_choice": "{{choices}}", "doc_to_target": "label",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}], "metadata": {"version": version}}
    task.update(overrides)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return folder


@torch.no_grad()
def choice_logliks(model, tokenizer, context: str, choices: list[str]) -> torch.Tensor:
    """log p(" " + choice | context) per choice: each whole text encoded once and split after the
    context tokens; the texts go through the model as one right-padded batch (causal attention
    keeps the padding out of the scored positions)."""
    ctx_len = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    seqs = [tokenizer(context + " " + c, add_special_tokens=False)["input_ids"] for c in choices]
    width = max(len(s) for s in seqs)
    batch = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    logp = torch.log_softmax(model(input_ids=batch).logits.double(), dim=-1)
    return torch.tensor([sum(float(logp[i, t - 1, s[t]]) for t in range(ctx_len, len(s)))
                         for i, s in enumerate(seqs)], dtype=torch.float64)


def expected_accuracy(model, tokenizer, records: list[dict]) -> tuple[float, float]:
    """acc (argmax log-likelihood) and acc_norm (argmax log-likelihood per character of the choice)."""
    acc = acc_norm = 0
    for r in records:
        ll = choice_logliks(model, tokenizer, PROMPT.format(question=r["question"]), r["choices"])
        per_char = ll / torch.tensor([float(len(c)) for c in r["choices"]], dtype=torch.float64)
        acc += int(ll.argmax()) == r["label"]
        acc_norm += int(per_char.argmax()) == r["label"]
    return acc / len(records), acc_norm / len(records)


def lm_eval(ctx, **options):
    ev = get_registry().build("evaluator", "lm_eval", options)
    return ev.evaluate(ctx, ctx.model, ctx.tokenizer), ev.report


def test_local_jsonl_task_accuracy_equals_argmax_loglikelihood(tmp_path):
    ctx = make_ctx(tmp_path)
    records = bundled_records("antonyms", "test", n=10)
    tasks = write_task(tmp_path / "tasks", records)
    got, report = lm_eval(ctx, tasks=["local_mc"], include_path=[str(tasks)], batch_size=3)

    acc, acc_norm = expected_accuracy(ctx.model, ctx.tokenizer, records)
    assert got["lm_eval/local_mc/acc"] == pytest.approx(acc)
    assert got["lm_eval/local_mc/acc_norm"] == pytest.approx(acc_norm)
    assert report["tasks"]["local_mc"]["version"] == 2.0
    assert report["tasks"]["local_mc"]["samples"]["effective"] == 10
    assert report["offline"] is True


def test_shipped_bundled_task_runs_offline_from_cached_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    ctx = make_ctx(tmp_path)
    got, report = lm_eval(ctx, tasks=["layerif_capitals"], limit=6)

    records = bundled_records("capitals", "test")[:6]
    acc, _ = expected_accuracy(ctx.model, ctx.tokenizer, records)
    assert got["lm_eval/layerif_capitals/acc"] == pytest.approx(acc)
    assert (tmp_path / "cache" / "lm_eval" / "capitals-v1-seed0" / "test-100.jsonl").is_file()
    assert report["tasks"]["layerif_capitals"] == {
        "version": 1.0, "n-shot": 0, "samples": {"original": 100, "effective": 6}}


def test_few_shot_count_is_passed_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    ctx = make_ctx(tmp_path)
    got, report = lm_eval(ctx, tasks=["layerif_arithmetic"], limit=3, num_fewshot=2)
    assert report["tasks"]["layerif_arithmetic"]["n-shot"] == 2
    assert report["tasks"]["layerif_arithmetic"]["samples"] == {"original": 2000, "effective": 3}
    assert 0.0 <= got["lm_eval/layerif_arithmetic/acc"] <= 1.0


def test_shipped_arithmetic_task_holds_2000_test_and_500_validation_questions(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    from layerif_eval.bundled import load_bundled

    yaml_text = (Path(__file__).resolve().parents[2] / "plugins" / "layerif-eval" / "layerif_eval" / "tasks"
                 / "layerif_arithmetic.yaml").read_text()
    assert "validation_size: 500" in yaml_text and "test_size: 2000" in yaml_text
    data = load_bundled(task="arithmetic", seed=0, validation_size=500, test_size=2000)
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (300, 500, 2000)
    assert list(data["test"])[:5] == bundled_records("arithmetic", "test", n=5)


def test_task_needing_the_hub_while_offline_names_the_local_file_fix(tmp_path):
    ctx = make_ctx(tmp_path)
    tasks = write_task(tmp_path / "tasks", bundled_records("antonyms", "test", n=2), name="hub_mc",
                       dataset_path="layerif-no-such-org/no-such-dataset", dataset_kwargs=None)
    with pytest.raises(DataError, match="point the task at local files"):
        lm_eval(ctx, tasks=["hub_mc"], include_path=[str(tasks)])


def test_hub_switch_is_restored_after_an_offline_evaluation(tmp_path):
    import datasets.config
    import huggingface_hub.constants

    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
              os.environ.get("HF_HUB_OFFLINE"))
    ctx = make_ctx(tmp_path)
    tasks = write_task(tmp_path / "tasks", bundled_records("antonyms", "test", n=2), name="hub_mc",
                       dataset_path="layerif-no-such-org/no-such-dataset", dataset_kwargs=None)
    with pytest.raises(DataError):
        lm_eval(ctx, tasks=["hub_mc"], include_path=[str(tasks)])
    after = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
             os.environ.get("HF_HUB_OFFLINE"))
    assert after == before


def test_missing_local_data_file_is_reported(tmp_path):
    ctx = make_ctx(tmp_path)
    tasks = write_task(tmp_path / "tasks", bundled_records("antonyms", "test", n=2), name="gone_mc")
    (tasks / "gone_mc.jsonl").unlink()
    with pytest.raises(DataError, match="gone_mc.jsonl.*data_files"):
        lm_eval(ctx, tasks=["gone_mc"], include_path=[str(tasks)])


def test_missing_include_path_is_reported(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ConfigError, match="include_path"):
        lm_eval(ctx, tasks=["local_mc"], include_path=[str(tmp_path / "nowhere")])


@pytest.mark.slow  # reads lm-eval's whole task catalogue (about 8 s)
def test_unknown_task_lists_close_names(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ConfigError, match="does not know the task 'layerif_capitls'.*layerif_capitals"):
        lm_eval(ctx, tasks=["layerif_capitls"])


@pytest.mark.slow
def test_smollm2_bundled_task_accuracy_equals_argmax_loglikelihood(tmp_path, monkeypatch, smollm2):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    model, tokenizer = smollm2
    ctx = make_ctx(tmp_path, model=model)
    ctx.tokenizer = tokenizer
    got, report = lm_eval(ctx, tasks=["layerif_capitals"], limit=6, batch_size=8)

    acc, acc_norm = expected_accuracy(model, tokenizer, bundled_records("capitals", "test")[:6])
    assert got["lm_eval/layerif_capitals/acc"] == pytest.approx(acc)
    assert got["lm_eval/layerif_capitals/acc_norm"] == pytest.approx(acc_norm)
    assert report["lm_eval_version"] != "unknown"


@pytest.mark.parametrize("show_progress", [False, True])
def test_console_outside_a_git_checkout_has_no_git_error_and_bars_follow_the_run(
        tmp_path, monkeypatch, capfd, show_progress):
    monkeypatch.chdir(tmp_path)  # not a git checkout: lm-eval's `git describe` fails here
    ctx = make_ctx(tmp_path)
    ctx.show_progress = show_progress
    tasks = write_task(tmp_path / "tasks", bundled_records("antonyms", "test", n=3))
    capfd.readouterr()
    lm_eval(ctx, tasks=["local_mc"], include_path=[str(tasks)])
    err = capfd.readouterr().err
    assert "fatal" not in err
    assert ("it/s]" in err) is show_progress  # lm-eval's tqdm bars
