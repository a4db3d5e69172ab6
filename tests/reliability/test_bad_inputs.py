"""The bad-input corpus: every case is a user mistake, run through the real CLI, that must end with
exit code 2, one line naming the problem and the fix, and a run directory holding nothing that is
half-written or that a rerun would trust."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _harness import (
    base_config,
    half_written,
    invoke,
    one_line,
    run_cli,
    save_tiny,
    sub_env,
    write_config,
    write_plugin_dists,
)

CAPS_TRAIN = {"source": "bundled:capitals", "limit": 8, "max_length": 96}


@dataclass
class Env:
    """What a case builds on: a temporary directory and the tiny models saved in it."""

    tmp: Path
    models: dict[str, Path]
    monkeypatch: Any
    run_dir: Path = field(init=False)

    def __post_init__(self):
        self.run_dir = self.tmp / "runs" / "r"

    def config(self, _file: str = "c.yaml", _model: str = "tiny", **changes: Any) -> str:
        cfg = base_config(self.tmp / "runs", self.models[_model], **changes)
        return str(write_config(self.tmp / _file, cfg))

    def text(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def task(self, **train: Any) -> list[dict[str, Any]]:
        return [{"name": "caps", "train": {**CAPS_TRAIN, **train},
                 "validation": {"source": "bundled:capitals", "split": "validation", "limit": 4,
                                "max_length": 96}}]


@dataclass
class Case:
    id: str
    what: str  # what is wrong
    args: Callable[[Env], list[str]]  # the command line (after `layerif --quiet`)
    message: str  # regex of the one-line error: the problem and the fix
    subprocess: bool = False  # needs a fresh interpreter (plugins loaded from entry points)
    keeps_finished: bool = False  # fails after earlier stages finished: their (verified) files stay


def _cfg(**changes):
    return lambda e: ["run", e.config(**changes)]


def _text(suffix: str, content: str | bytes, cmd: str = "run"):
    return lambda e: [cmd, e.text(f"c{suffix}", content)]


def _set(*overrides: str):
    def args(e: Env) -> list[str]:
        out = ["run", e.config()]
        for o in overrides:
            out += ["--set", o]
        return out
    return args


def _train(**train):
    return lambda e: ["run", e.config(tasks=e.task(**train))]


def _jsonl_train(content: str | bytes, suffix: str = ".jsonl", **train):
    def args(e: Env) -> list[str]:
        src = e.text(f"data{suffix}", content)
        return ["run", e.config(tasks=e.task(source=src, **train))]
    return args


def _scores(values: Any, raw: str | None = None, cmd: str = "prune"):
    def args(e: Env) -> list[str]:
        scores = e.text("scores.json", raw if raw is not None else json.dumps(
            {"caps": {"scorer": "layerif", "higher_is_better": False, "values": values}}))
        cfg = e.config(allocation={"name": "uniform_sparsity", "options": {"sparsity": 0.5}},
                       application={"name": "prune", "options": {
                           "pruner": "magnitude", "save_model": False}})
        return [cmd, cfg, "--scores", scores]
    return args


def _model(name: str, **model: Any):
    def args(e: Env) -> list[str]:
        spec = {"source": str(e.models[name]), "device": "cpu", "dtype": "float32", **model}
        return ["run", e.config(model=spec)]
    return args


def _model_source(source: Callable[[Env], str]):
    return lambda e: ["run", e.config(model={"source": source(e), "device": "cpu"})]


def _estimator_that_raises(e: Env) -> list[str]:
    return ["run", e.config(scorer={"name": "layerif", "estimator": {"name": "crashing_est"}})]


def _plugin_estimator(name: str):
    return lambda e: ["run", e.config(scorer={"name": "layerif", "estimator": {"name": name}})]


def _enospc_at(target: str):
    """Make the first write of a ``target`` artifact (``safetensors`` or ``json``) fail half-way with
    ENOSPC, as a full disk does: some bytes reach the temporary file, then the write fails."""
    def args(e: Env) -> list[str]:
        import layerif_core.artifacts as artifacts

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        if target == "safetensors":
            real = artifacts.save_file

            def save_file(data, path, metadata=None):
                real(data, path, metadata=metadata)
                with open(path, "r+b") as f:
                    f.truncate(max(1, os.path.getsize(path) // 2))
                full()

            e.monkeypatch.setattr(artifacts, "save_file", save_file)
        else:
            real_write = Path.write_text

            def write_text(self, data, *a, **k):
                if self.name.startswith(".scores.json."):
                    real_write(self, data[: len(data) // 2], *a, **k)
                    full()
                return real_write(self, data, *a, **k)

            e.monkeypatch.setattr(Path, "write_text", write_text)
        return ["run", e.config()]
    return args


CASES = [
    # --- config: syntax and shape ---------------------------------------------------------------
    Case("yaml-syntax", "YAML with an unclosed bracket", _text(".yaml", "name: r\ntasks: [\n  {a: 1}\n"),
         r"not valid YAML: line \d+, column \d+: .*; fix the syntax there"),
    Case("yaml-tab", "YAML indented with a tab", _text(".yaml", "name: r\nmodel:\n\tsource: x\n"),
         r"not valid YAML: line 3, column 1: .*fix the syntax"),
    Case("toml-syntax", "TOML with a key and no value", _text(".toml", "name = \n"),
         r"not valid TOML: .*line 1.*fix the syntax"),
    Case("json-syntax", "JSON with a trailing comma", _text(".json", '{"name": "r",}\n'),
         r"not valid JSON: line 1, column \d+: .*fix the syntax"),
    Case("yaml-list", "a YAML list instead of a mapping", _text(".yaml", "- name: r\n- tasks: []\n"),
         r"holds a list, not a mapping of keys to values; start from `layerif init`"),
    Case("json-string", "a JSON string instead of an object", _text(".json", '"run"'),
         r"holds a str, not a mapping.*layerif init"),
    Case("toml-tasks-table", "TOML whose tasks is a table, not an array",
         _text(".toml", 'name = "r"\n[tasks]\nname = "caps"\n'),
         r"'tasks': Input should be a valid list .*fix the value"),
    Case("non-utf8-config", "a config file in Latin-1", _text(".yaml", "name: caf\xe9\n".encode("latin-1")),
         r"is not UTF-8 text \(byte \d+\); save it as UTF-8"),
    Case("missing-config", "a config path that does not exist", lambda e: ["run", str(e.tmp / "nope.yaml")],
         r"config file '.*nope.yaml' does not exist; create one with `layerif init`"),
    Case("missing-tasks", "no tasks", lambda e: ["run", e.text("c.yaml", yaml.safe_dump({"name": "r"}))],
         r"missing key 'tasks'; add it"),
    # --- config: types and ranges ---------------------------------------------------------------
    Case("type-batch", "batch_size is a word", _cfg(batch_size="eight"),
         r"'batch_size': Input should be a valid integer.*'eight'.*fix the value"),
    Case("type-limit", "a split's limit is a list", _train(limit=[1]),
         r"'tasks.0.train.limit': Input should be a valid integer.*fix the value"),
    Case("type-modules", "layers.modules is not one of its choices", _cfg(layers={"modules": "mlpp"}),
         r"'layers.modules': Input should be 'all', 'attention' or 'mlp'"),
    Case("range-batch", "batch_size 0", _cfg(batch_size=0), r"'batch_size': .*greater than or equal to 1"),
    Case("range-limit", "limit 0", _train(limit=0), r"'tasks.0.train.limit': .*greater than or equal to 1"),
    Case("range-max-length", "max_length 1", _train(max_length=1),
         r"max_length': .*greater than or equal to 2"),
    Case("range-dropout", "finetune.dropout 1.5", _cfg(finetune={"dropout": 1.5}),
         r"'finetune.dropout': Input should be less than 1"),
    Case("range-option", "an estimator option out of range",
         _cfg(scorer={"name": "layerif", "estimator": {"name": "ekfac", "options": {"damping": -1}}}),
         r"estimator 'ekfac' option 'damping'"),
    Case("duplicate-tasks", "two tasks with one name",
         lambda e: ["run", e.config(tasks=e.task() + e.task())], r"task names must be unique"),
    # --- config: unknown keys at every level ----------------------------------------------------
    Case("unknown-top", "a misspelt top-level key", _cfg(batchsize=2),
         r"unknown key 'batchsize' \(did you mean 'batch_size'\?\); valid keys here"),
    Case("unknown-model", "a misspelt model key",
         lambda e: ["run", e.config(model={"sorce": str(e.models["tiny"])})],
         r"unknown key 'model.sorce' \(did you mean 'source'\?\)"),
    Case("unknown-split", "a misspelt data key", _train(splt="train"),
         r"unknown key 'tasks.0.train.splt' \(did you mean 'split'\?\)"),
    Case("unknown-postprocess", "a misspelt postprocess key",
         _cfg(scorer={"name": "layerif", "postprocess": {"windw": 5}}),
         r"unknown key 'scorer.postprocess.windw' \(did you mean 'window'\?\)"),
    Case("unknown-finetune", "a misspelt finetune key", _cfg(finetune={"rnk": 4}),
         r"unknown key 'finetune.rnk' \(did you mean 'rank'\?\)"),
    Case("unknown-task", "a misspelt task key",
         lambda e: ["run", e.config(tasks=[{**e.task()[0], "validaton": e.task()[0]["validation"]}])],
         r"unknown key 'tasks.0.validaton' \(did you mean 'validation'\?\)"),
    Case("unknown-layers", "a misspelt layers key", _cfg(layers={"modulez": "mlp"}),
         r"unknown key 'layers.modulez' \(did you mean 'modules'\?\)"),
    Case("unknown-component", "a misspelt key of a component spec",
         _cfg(scorer={"name": "layerif", "estimator": {"name": "ekfac", "optons": {}}}),
         r"unknown key 'scorer.estimator.optons' \(did you mean 'options'\?\)"),
    Case("unknown-option", "a misspelt estimator option",
         _cfg(scorer={"name": "layerif", "estimator": {"name": "ekfac", "options": {"dampng": 0.1}}}),
         r"estimator 'ekfac' has no option 'dampng' \(did you mean 'damping'\?\)"),
    # --- config: unknown names ------------------------------------------------------------------
    Case("unknown-estimator", "an estimator nobody registered",
         _cfg(scorer={"name": "layerif", "estimator": {"name": "ekfca"}}),
         r"unknown estimator 'ekfca' \(did you mean 'ekfac'\?\); registered estimators:"),
    Case("unknown-aggregator", "an unknown aggregator",
         _cfg(scorer={"name": "layerif", "aggregator": {"name": "helpfl_sum"}}),
         r"unknown aggregator 'helpfl_sum' \(did you mean 'helpful_sum'\?\)"),
    Case("removed-aggregator", "positive_sum, which summed the harmful side",
         _cfg(scorer={"name": "layerif", "aggregator": {"name": "positive_sum"}}),
         r"aggregator 'positive_sum' was removed: it summed the harmful side.*use helpful_sum "
         r"\(the paper's \+VE\), or harmful_sum for the reverse experiment"),
    Case("unknown-scorer", "an unknown scorer", _cfg(scorer={"name": "layerfi"}),
         r"unknown scorer 'layerfi'"),
    Case("unknown-allocator", "an unknown allocator", _cfg(allocation={"name": "alpha_prunning"}),
         r"unknown allocator 'alpha_prunning' \(did you mean 'alpha_pruning'\?\)"),
    Case("unknown-application", "an unknown application plugin",
         _cfg(allocation={"name": "uniform_sparsity", "options": {"sparsity": 0.5}},
              application={"name": "prun"}),
         r"unknown application 'prun' \(did you mean 'prune'\?\)"),
    Case("unknown-evaluator", "an unknown evaluator", _cfg(evaluation=[{"name": "perplexty"}]),
         r"unknown evaluator 'perplexty' \(did you mean 'perplexity'\?\)"),
    # --- config: --set ----------------------------------------------------------------------------
    Case("set-unknown-top", "--set of a key that does not exist", _set("batchsize=2"),
         r"override 'batchsize': no key 'batchsize' at the top level \(did you mean 'batch_size'\?\)"),
    Case("set-unknown-nested", "--set of a misspelt section", _set("scorer.estimater.name=kfac"),
         r"no key 'estimater' under 'scorer' \(did you mean 'scorer.estimator.name'\?\); valid keys"),
    Case("set-unknown-leaf", "--set of a misspelt leaf", _set("tasks.0.train.limt=4"),
         r"no key 'limt' under 'tasks.0.train' \(did you mean 'tasks.0.train.limit'\?\)"),
    Case("set-index", "--set of a task index that does not exist", _set("tasks.3.train.limit=4"),
         r"'3' is not an index of that list \(it has 1 entries\)"),
    Case("set-into-value", "--set below a plain value", _set("batch_size.x=1"),
         r"'batch_size' is a value, not a section; set it directly"),
    Case("set-no-equals", "--set without '='", _set("batch_size"), r"must look like path.to.key=value"),
    Case("set-bad-type", "--set of a wrong type", _set("batch_size=[1, 2]"),
         r"'batch_size': Input should be a valid integer"),
    # --- hostile names ----------------------------------------------------------------------------
    Case("name-escape", "a run name that climbs out of output_dir", _cfg(name="../../x"),
         r"run name '../../x' is not a plain directory name \(it would escape output_dir\)"),
    Case("name-absolute", "an absolute run name", _cfg(name="/etc"),
         r"run name '/etc' is not a plain directory name"),
    # --- data -----------------------------------------------------------------------------------
    Case("data-missing", "a data file that does not exist", _train(source="nowhere.jsonl"),
         r"data file 'nowhere.jsonl' does not exist; check the path"),
    Case("data-empty", "an empty data file", _jsonl_train(""),
         r"data file '.*data.jsonl' is empty; add examples"),
    Case("data-field", "a template field the records lack",
         _jsonl_train('{"q": "a", "a": "b"}\n', prompt="{question}", completion="{a}"),
         r"example 0 of '.*' lacks field\(s\) \['question'\] used by the template; its fields are "
         r"\['a', 'q'\]\. Fix the template"),
    Case("data-truncated", "every example truncated before its answer",
         _train(max_length=4), r"'bundled:capitals' .*no token in the loss after truncation to 4; "
         r"raise max_length"),
    Case("data-non-utf8", "a data file with Latin-1 bytes",
         _jsonl_train('{"text": "caf\xe9"}\n'.encode("latin-1")),
         r"data file '.*data.jsonl' cannot be read as json: it is not UTF-8 .*; save it as UTF-8"),
    Case("data-split", "a split that does not exist", _train(split="dev"),
         r"no bundled \w+ 'capitals' with split 'dev'.*splits train, validation, test"),
    Case("data-bundled", "a bundled task that does not exist", _train(source="bundled:capitols"),
         r"no bundled \w+ 'capitols'.*bundled tasks:"),
    Case("data-extension", "a data file of an unknown format", _jsonl_train("a,b\n", suffix=".xlsx"),
         r"has an unknown extension; use one of"),
    Case("scores-other-model", "a scores.json of a 2-layer model for a 3-layer one", _scores([1.0, 2.0]),
         r"have 2 layers but the model has 3; use scores computed for this model"),
    Case("scores-nan", "a hand-edited scores.json with NaN", _scores(None, raw='{"caps": {"scorer": "x", '
         '"higher_is_better": false, "values": [1.0, NaN, 2.0]}}'),
         r"scores of task 'caps' in '.*scores.json' are not finite at layer\(s\) \[1\]; fix or recompute"),
    Case("scores-garbage", "a scores.json that is not one", _scores(None, raw='{"caps": [1, 2]}'),
         r"is not a layerif scores.json; recompute it"),
    Case("scores-moe-other-model", "moe --scores of another model", _scores([1.0], cmd="moe"),
         r"have 1 layers but the model has 3; use scores computed for this model"),
    # --- model ------------------------------------------------------------------------------------
    Case("model-missing", "a model path that does not exist",
         _model_source(lambda e: str(e.tmp / "no-model")),
         r"model path '.*no-model' does not exist; check the path"),
    Case("model-no-config", "a directory that is not a model", _model_source(lambda e: str(e.tmp)),
         r"has no config.json; point to a transformers model directory"),
    Case("model-no-weights", "a model directory without weights", _model("noweights"),
         r"model directory '.*' has no weights \(\*.safetensors or \*.bin\); point to a directory saved "
         r"with save_pretrained"),
    Case("model-nan", "a checkpoint with NaN weights", _model("nan"),
         r"has non-finite weights \(NaN or inf\) in 'model.layers.1.mlp.up_proj.weight'; the checkpoint "
         r"is damaged"),
    Case("model-no-pad", "a tokenizer with neither pad nor EOS token", _model("nopad"),
         r"has neither a pad nor an EOS token; add one"),
    Case("model-remote-code", "a model that needs its own code, trust_remote_code off", _model("remote"),
         r"needs its own code; set model.trust_remote_code=true if you trust its authors"),
    Case("adapter-other-base", "a LoRA adapter made for a wider model",
         _model("tiny", adapter="{wide_adapter}"),
         r"adapter '.*' does not fit this model .*use an adapter trained on this model.source"),
    Case("adapter-not-peft", "an adapter directory without adapter_config.json",
         _model("tiny", adapter="{tmp}"),
         r"has no adapter_config.json; point to a directory saved by peft"),
    Case("context", "max_length longer than the model's context", _train(max_length=512),
         r"max_length 512 of 'bundled:capitals' exceeds the model's context of 128 tokens; set max_length "
         r"<= 128"),
    # --- filesystem -------------------------------------------------------------------------------
    Case("output-is-file", "output_dir is a file",
         lambda e: ["run", e.config(output_dir=e.text("taken", "x"))],
         r"cannot write '.*taken/r': a part of that path is a file, not a directory; choose another"),
    Case("output-read-only", "output_dir on a read-only file system (/sys)",
         lambda e: ["run", e.config(output_dir="/sys/layerif-runs")],
         r"cannot write '/sys/layerif-runs/r' \(.*\); choose a writable output_dir"),
    Case("enospc-factors", "the disk fills up while the factors are written", _enospc_at("safetensors"),
         r"disk full while writing '.*factors/.*'; free space and rerun"),
    Case("enospc-scores", "the disk fills up while scores.json is written", _enospc_at("json"),
         r"disk full while writing '.*scores.json'; free space and rerun", keeps_finished=True),
    # --- plugins (entry points: a fresh interpreter) ---------------------------------------------
    Case("plugin-import-error", "a plugin whose import fails, named in the config",
         _plugin_estimator("broken_est"),
         r"unknown estimator 'broken_est'.*Not loaded: plugin 'reliability-broken' \(import failed",
         subprocess=True),
    Case("plugin-name-clash", "a plugin that registers a name already taken, then used",
         _plugin_estimator("clash_other"),
         r"unknown estimator 'clash_other'.*Not loaded: plugin 'reliability-clash' \(.*'ekfac'.*already "
         r"registered by 'layerif'; rename it", subprocess=True),
    Case("plugin-raises", "a plugin estimator that raises in the middle of its pass",
         _estimator_that_raises,
         r"plugin 'reliability-crash' failed \(in reliability_crash.fit\): RuntimeError: boom at batch 1; "
         r"what it left in the run directory was removed; fix or uninstall the plugin", subprocess=True),
]

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    from conftest import VOCAB, tiny_model

    root = tmp_path_factory.mktemp("models")
    out = {"tiny": save_tiny(root / "tiny")}
    nan = save_tiny(root / "nan")
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(nan)
    out["nan"] = nan
    noweights = save_tiny(root / "noweights")
    for f in noweights.glob("*.safetensors"):
        f.unlink()
    out["noweights"] = noweights
    nopad = root / "nopad"
    tiny_model().save_pretrained(nopad)
    tok = Tokenizer(tmodels.WordLevel(vocab={c: i for i, c in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(nopad)
    out["nopad"] = nopad
    remote = save_tiny(root / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["model_type"] = "custom_thing"  # no built-in class: only its own code could load it
    cfg["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                       "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_custom.py").write_text("raise RuntimeError('remote code ran')\n")
    out["remote"] = remote
    wide = tiny_model(hidden_size=32, intermediate_size=64)
    peft_model = get_peft_model(wide, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(root / "wide-adapter")
    out["wide_adapter"] = root / "wide-adapter"
    out["plugins"] = write_plugin_dists(root / "plugins")
    return out


def _expand(args: list[str], env: Env) -> list[str]:
    """Fill ``{wide_adapter}``/``{tmp}`` placeholders inside config files the case wrote."""
    for a in args:
        p = Path(a)
        if p.is_file() and p.suffix in (".yaml", ".json", ".toml"):
            try:
                text = p.read_text()
            except UnicodeDecodeError:
                continue
            text = text.replace("'{wide_adapter}'", str(env.models["wide_adapter"]))
            text = text.replace("'{tmp}'", str(env.tmp))
            p.write_text(text)
    return args


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if "error:" in ln]
    assert len(lines) == 1, f"expected one error line, got:\n{output}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_half_written(case, models, tmp_path, monkeypatch):
    env = Env(tmp_path, models, monkeypatch)
    args = _expand(case.args(env), env)
    if case.subprocess:
        proc = run_cli(*args, cwd=tmp_path, env=sub_env(models["plugins"]))
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        result = invoke(*args)
        code, output = result.exit_code, result.output
    assert code == 2, f"{case.what}: exit {code}\n{output}"
    assert "Traceback" not in output
    line = error_line(output)
    assert re.search(case.message, line), f"{case.what}: {one_line(line)!r} !~ {case.message!r}"
    assert half_written(env.run_dir) == []
    # nothing a rerun would trust: no scores, no cached tensors, no scratch left by a failing plugin
    assert not (env.run_dir / "scores.json").exists()
    if env.run_dir.exists() and not case.keeps_finished:
        left = sorted(p.relative_to(env.run_dir).as_posix() for p in env.run_dir.rglob("*") if p.is_file())
        assert all(name in ("manifest.json", ".lock", "log.txt") for name in left), left


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
