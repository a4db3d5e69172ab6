"""The LayerIF paper's five tasks (source ``paper:<task>``), read from their hub datasets at run time.

MRPC and CoLA (GLUE, ``nyu-mll/glue``), CommonsenseQA (``tau/commonsense_qa``), OpenBookQA
(``allenai/openbookqa``, config ``main``) and ScienceQA without images (``derek-thomas/ScienceQA``,
the records whose ``image`` is empty), rendered as the authors' MoLA/AlphaLoRA data files render them
(HadiAskari/Expert_Allocation, ``datasets/*.json``, checked record by record):

- MRPC: ``"Tell me if the statements equivalent, not equivalent.\\nSentence 1: {sentence1}\\nSentence 2:
  {sentence2}\\n"``, answer ``equivalent`` (label 1) or ``not equivalent`` (label 0);
- CoLA: ``"Tell me if the statement unacceptable, acceptable.\\nSentence: {sentence}\\n"``, answer
  ``acceptable`` (label 1) or ``unacceptable`` (label 0);
- CommonsenseQA / OpenBookQA: ``"Question: {question}\\nOptions: (A) … (B) …\\n"`` (OpenBookQA's
  question is ``question_stem``), answer the ``answerKey`` letter;
- ScienceQA: ``"Context: {hint or N/A}\\nQuestion: {question}\\nOptions: (A) … (B) …\\n"``, answer the
  letter of the ``answer`` index.

The response is ``"Answer: {answer}."`` for GLUE and ``"Answer: The answer is {letter}."`` for the
QA tasks, the sentence the authors' ``evaluation.py`` extracts. Each record carries ``instruction``,
``input`` (empty), ``output``, ``answer``, ``text`` (``instruction + " " + output``: the text the
authors' influence computation reads, every token in the loss) and ``alpaca`` (the Alpaca-LoRA prompt
their training and evaluation put before ``output``).

Splits and sizes: ``train`` is the first 300 records of the hub's train split and ``validation`` the
first 50 of its validation split (the authors' "IF-short" sets: ``dataset.select(range(300))`` and
``range(50)``); ``train_full`` is the whole train split their LoRA-MoE training reads; ``test`` is
the whole split their evaluation reads (the hub's validation split where the test split has no
labels: CoLA, CommonsenseQA). ``data_files`` reads a local copy instead of the
hub (parquet, json/jsonl or csv files of that split, in the hub's schema).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerif_core.errors import DataError

ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                       "provides further context. Write a response that appropriately completes the "
                       "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                       "### Response:\n")
RESPONSE_SPLIT = "### Response:"
SIZES = {"train": 300, "validation": 50, "train_full": None, "test": None}  # None: the whole split
# for plans made offline: records of each task's whole train split (the hub's; ScienceQA's text-only
# records: 12,726 less the 6,218 with an image), of its test split and the mean characters of its
# instruction (counted on the authors' data and evaluation files)
TRAIN_SIZES = {"mrpc": 3668, "cola": 8551, "commonsense_qa": 9741, "openbookqa": 4957, "scienceqa": 6508}
TEST_SIZES = {"mrpc": 1725, "cola": 1043, "commonsense_qa": 1221, "openbookqa": 500, "scienceqa": 2224}
INSTRUCTION_CHARS = {"mrpc": 316, "cola": 104, "commonsense_qa": 159, "openbookqa": 162,
                     "scienceqa": 258}


@dataclass(frozen=True)
class PaperTask:
    """One of the paper's tasks: where its records live and how one becomes an instruction."""

    name: str
    hub: str
    config: str | None
    splits: dict[str, str]  # our split -> the hub split it is read from
    kind: str  # "glue": a label word is the answer; "choice": a letter is
    instruction: Callable[[dict[str, Any]], str]
    answer: Callable[[dict[str, Any]], str | None]  # None: the record has no label
    keep: Callable[[dict[str, Any]], bool] = lambda r: True
    labels: tuple[str, ...] = ()  # the label words of a "glue" task


def _options(texts: list[str], letters: list[str] | None = None) -> str:
    letters = letters or [chr(ord("A") + k) for k in range(len(texts))]
    return " ".join(f"({k}) {t}" for k, t in zip(letters, texts, strict=True))


def _label_word(words: tuple[str, ...]) -> Callable[[dict[str, Any]], str | None]:
    def answer(r: dict[str, Any]) -> str | None:
        label = r.get("label")
        return words[label] if isinstance(label, int) and 0 <= label < len(words) else None
    return answer


def _key(r: dict[str, Any]) -> str | None:
    return r.get("answerKey") or None


def _sqa_letter(r: dict[str, Any]) -> str | None:
    a = r.get("answer")
    return chr(ord("A") + a) if isinstance(a, int) and a >= 0 else None


_MRPC_WORDS = ("not equivalent", "equivalent")
_COLA_WORDS = ("unacceptable", "acceptable")
_SPLITS = {"train": "train", "validation": "validation", "train_full": "train", "test": "test"}
_TEST_IS_VALIDATION = {"train": "train", "validation": "validation", "train_full": "train",
                       "test": "validation"}

PAPER_TASKS: dict[str, PaperTask] = {
    "mrpc": PaperTask(
        "mrpc", "nyu-mll/glue", "mrpc", _SPLITS, "glue",
        lambda r: (f"Tell me if the statements equivalent, not equivalent.\nSentence 1: {r['sentence1']}"
                   f"\nSentence 2: {r['sentence2']}\n"),
        _label_word(_MRPC_WORDS), labels=_MRPC_WORDS),
    "cola": PaperTask(
        "cola", "nyu-mll/glue", "cola", _TEST_IS_VALIDATION, "glue",
        lambda r: f"Tell me if the statement unacceptable, acceptable.\nSentence: {r['sentence']}\n",
        _label_word(_COLA_WORDS), labels=_COLA_WORDS),
    "commonsense_qa": PaperTask(
        "commonsense_qa", "tau/commonsense_qa", None, _TEST_IS_VALIDATION, "choice",
        lambda r: (f"Question: {r['question']}\nOptions: "
                   f"{_options(r['choices']['text'], r['choices']['label'])}\n"), _key),
    "openbookqa": PaperTask(
        "openbookqa", "allenai/openbookqa", "main", _SPLITS, "choice",
        lambda r: (f"Question: {r['question_stem']}\nOptions: "
                   f"{_options(r['choices']['text'], r['choices']['label'])}\n"), _key),
    "scienceqa": PaperTask(
        "scienceqa", "derek-thomas/ScienceQA", None, _SPLITS, "choice",
        lambda r: (f"Context: {r['hint'] or 'N/A'}\nQuestion: {r['question']}\nOptions: "
                   f"{_options(list(r['choices']))}\n"), _sqa_letter,
        keep=lambda r: r.get("image") is None),
}


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca-LoRA prompt (``templates/alpaca.json``) the authors' training and evaluation use."""
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT.format(instruction=instruction)


def render(task: PaperTask, raw: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """One hub record of ``task`` as the authors' instruction record (fields in the module doc)."""
    try:
        instruction, answer = task.instruction(raw), task.answer(raw)
    except (KeyError, TypeError) as exc:
        raise DataError(f"record {index} of paper task '{task.name}' does not have the schema of "
                        f"{task.hub} ({type(exc).__name__}: {exc}); its fields are {sorted(raw)}. Point "
                        "data_files at that dataset's files.") from None
    if answer is None:
        raise DataError(f"record {index} of paper task '{task.name}' has no label (the hub's unlabelled "
                        "test split?); use split 'test' of the preset, which reads a labelled split.")
    output = f"Answer: {answer}." if task.kind == "glue" else f"Answer: The answer is {answer}."
    return {"instruction": instruction, "input": "", "output": output, "answer": answer,
            "text": f"{instruction} {output}", "alpaca": alpaca_prompt(instruction)}


def paper_task(name: str) -> PaperTask:
    """The preset ``name`` (a :class:`DataError` naming the five otherwise)."""
    if name not in PAPER_TASKS:
        raise DataError(f"no paper task '{name}'; the paper's tasks are "
                        f"{', '.join('paper:' + n for n in PAPER_TASKS)}.")
    return PAPER_TASKS[name]


def split_examples(name: str, split: str) -> int:
    """How many records split ``split`` of paper task ``name`` has, known without the hub."""
    task = paper_task(name).name
    return SIZES.get(split) or (TRAIN_SIZES[task] if split == "train_full" else TEST_SIZES[task])


def paper_records(name: str, split: str, data_files: str | list[str] | None = None
                  ) -> list[dict[str, Any]]:
    """The rendered records of paper task ``name``, split ``split`` (its size in ``SIZES``)."""
    task = paper_task(name)
    if split not in task.splits:
        raise DataError(f"paper task '{name}' has splits {', '.join(task.splits)}, not '{split}'.")
    raw = [r for r in _raw_records(task, task.splits[split], data_files) if task.keep(r)]
    n = SIZES[split]
    if n is not None and len(raw) < n:
        raise DataError(f"paper task '{name}' split '{split}' has {len(raw)} usable records, fewer "
                        f"than the paper's {n}; point data_files at the whole split.")
    return [render(task, r, i) for i, r in enumerate(raw[:n])]


_LOADERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _raw_records(task: PaperTask, hub_split: str, data_files: str | list[str] | None
                 ) -> list[dict[str, Any]]:
    import datasets

    if data_files is not None:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        missing = [f for f in files if not Path(f).expanduser().is_file()]
        if missing:
            raise DataError(f"data_files {missing} of paper task '{task.name}' do not exist; check the "
                            "path(s).")
        loader = _LOADERS.get(Path(files[0]).suffix)
        if loader is None:
            raise DataError(f"data_files of paper task '{task.name}' must be {', '.join(_LOADERS)} "
                            f"files, got '{files[0]}'.")
        ds = datasets.load_dataset(loader, data_files=[str(Path(f).expanduser()) for f in files],
                                   split="train")
        return [dict(r) for r in ds]
    try:
        ds = datasets.load_dataset(task.hub, task.config, split=hub_split)
        if "image" in ds.column_names:  # only whether there is one matters: leave images undecoded
            ds = ds.cast_column("image", datasets.Image(decode=False))
    except Exception as exc:  # datasets raises many types for an unreachable hub
        config = f", config '{task.config}'" if task.config else ""
        raise DataError(f"cannot load hub dataset '{task.hub}'{config}, split '{hub_split}', for paper "
                        f"task '{task.name}' ({type(exc).__name__}); save that split locally (e.g. "
                        f"datasets.load_dataset('{task.hub}', {task.config!r}, split='{hub_split}')"
                        ".to_parquet('FILE.parquet') on a machine with access) and set data_files: "
                        "FILE.parquet.") from None
    return [dict(r) for r in ds]
