"""Loading and tokenising a data split: local files, hub datasets, bundled tasks and text corpora.

A record becomes ``prompt + completion`` (loss on the completion tokens only, by default) or one
``text``; templates use ``{field}`` placeholders. Sequences are truncated to ``max_length`` and the
number of truncated ones is reported. Records with no token in the loss (a blank line of a text file,
or an answer lost to truncation) are skipped and counted, with one warning; only a split whose every
record is skipped is an error.

With the LayerIF authors' padding (``padding="authors"``), every example of a split is then
right-padded with EOS to the split's longest and the pads stay in the loss (:func:`pad_like_authors`).

With ``pack``, the texts are language-model data instead: each record's tokens followed by EOS,
concatenated into one stream, cut into windows of exactly ``max_length`` tokens (the last partial
window dropped), every token in the loss: how LM training data, pruning calibration sets and
perplexity windows are built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerif_core.config import DataSpec
from layerif_core.errors import DataError

log = logging.getLogger(__name__)

IGNORE = -100
DEFAULT_MAX_LENGTH = 2048  # when neither the spec nor the model states a length
AUTHORS_MAX_LENGTH = 128  # the LayerIF authors' truncation (create_tokenized_datasets)
BUNDLED_PROMPT = "Question: {question}\nAnswer: "
BUNDLED_COMPLETION = "{answer}"
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass
class Batch:
    """A padded batch: ``input_ids``/``attention_mask``/``labels`` ``[B, T]``, ``index`` ``[B]``.

    ``example_mask`` ``[B, T]`` marks the positions that belong to each example where that differs
    from the attention mask: under the authors' padding the pads are masked as attention keys but
    are part of the example (in its loss); None: the attention mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    example_mask: torch.Tensor | None = None

    def positions(self) -> torch.Tensor:
        """``[B, T]``: 1 at the positions of each example (its activations count), 0 at padding."""
        return self.attention_mask if self.example_mask is None else self.example_mask

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.labels.to(device), self.index,
                     None if self.example_mask is None else self.example_mask.to(device))


def pad_rows(input_ids: list[list[int]], labels: list[list[int]], pad_id: int,
             index: list[int], attended: list[int] | None = None) -> Batch:
    """Sequences right-padded to the longest as one :class:`Batch` (padding: ``pad_id``, label
    ``IGNORE``, attention mask 0). ``attended`` (the authors' padding): the number of leading tokens
    of each sequence that are attention keys; its other tokens are pads in the loss, attention mask
    0 but ``example_mask`` 1."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    example = None if attended is None else torch.zeros((len(input_ids), width), dtype=torch.long)
    for r, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
        ids[r, :len(x)] = torch.tensor(x)
        lab[r, :len(x)] = torch.tensor(y)
        mask[r, :len(x) if attended is None else attended[r]] = 1
        if example is not None:
            example[r, :len(x)] = 1
    return Batch(ids, mask, lab, torch.tensor(index), example)


def pad_like_authors(input_ids: list[list[int]], labels: list[list[int]], eos_id: int
                     ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The LayerIF authors' padding of one split (``create_tokenized_datasets`` in
    HadiAskari/Expert_Allocation ``LayerIF_Computation/lora_model_alpha.py``: ``padding=True``, pad
    token = EOS, right side, then ``labels = input_ids``): every sequence right-padded with ``eos_id``
    to the longest, each pad labelled ``eos_id`` (in the loss), so that with the mean reduction an
    example of T positions has the Hugging Face loss ``(1/(T−1)) Σ_{t<T} CE(logits_t, x_{t+1})``
    over its own tokens and its pads alike. Returns ``(input_ids, labels, attended)``, ``attended``
    the number of each sequence's own tokens (the attention mask's ones)."""
    width = max(len(x) for x in input_ids)
    ids = [x + [eos_id] * (width - len(x)) for x in input_ids]
    lab = [y + [eos_id] * (width - len(y)) for y in labels]
    return ids, lab, [len(x) for x in input_ids]


@dataclass
class TokenizedSplit:
    """Token sequences with their loss labels (``-100`` = not in the loss)."""

    name: str
    input_ids: list[list[int]]
    labels: list[list[int]]
    fingerprint: str
    n_truncated: int = 0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    n_skipped: int = 0  # records with no token in the loss (blank, or too short), left out
    reduction: str = "sum"  # an example's loss: "sum" or "mean" of its token cross-entropies
    attended: list[int] | None = None  # the authors' padding: each example's own tokens (the rest pads)

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: list[int]) -> TokenizedSplit:
        """The examples at ``indices``, in that order (used for sharding and for tests)."""
        h = hashlib.sha256(f"{self.fingerprint}|{indices}".encode()).hexdigest()[:16]
        return TokenizedSplit(self.name, [self.input_ids[i] for i in indices],
                              [self.labels[i] for i in indices], h, 0,
                              [self.records[i] for i in indices] if self.records else [],
                              reduction=self.reduction,
                              attended=None if self.attended is None else
                              [self.attended[i] for i in indices])

    def batches(self, batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
        """Right-padded batches in order; ``index`` holds positions in this split."""
        for start in range(0, len(self), batch_size):
            rows = list(range(start, min(start + batch_size, len(self))))
            yield pad_rows([self.input_ids[i] for i in rows], [self.labels[i] for i in rows],
                           pad_id, rows,
                           None if self.attended is None else [self.attended[i] for i in rows])

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


def load_records(spec: DataSpec, seed: int = 0) -> list[dict[str, Any]]:
    """The raw records of ``spec`` (before templating): after the first ``spec.skip``, at most
    ``spec.limit`` of them. A generated bundled task generates ``skip + limit`` records when
    ``limit`` is set (its split sizes otherwise), so ``limit`` may exceed the default size."""
    if spec.source.startswith("bundled:"):
        records = _bundled(spec, seed)
    elif spec.source.startswith("paper:"):
        from layerif_core.tasks.paper import paper_records

        records = paper_records(spec.source.split(":", 1)[1], spec.split, spec.data_files)
    else:
        path = Path(spec.source).expanduser()
        if path.suffix in _FORMATS or path.exists():
            records = _local(spec, path)
        else:
            records = _hub(spec)
    if spec.skip and spec.skip >= len(records):
        raise DataError(f"dataset '{spec.source}' (split '{spec.split}') has {len(records)} records, "
                        f"no more than skip {spec.skip}; lower skip.")
    records = records[spec.skip:]
    if spec.limit is not None:
        records = records[: spec.limit]
    if not records:
        raise DataError(f"dataset '{spec.source}' (split '{spec.split}') is empty; point to a file "
                        "with at least one example.")
    return records


def _bundled(spec: DataSpec, seed: int) -> list[dict[str, Any]]:
    from layerif_core.tasks import BUNDLED, TEXTS, bundled_records, corpus_records

    task = spec.source.split(":", 1)[1]
    try:
        if task in TEXTS:
            return corpus_records(task, spec.split)
        # a generated split has no end: `limit` (after `skip`) says how many records to generate
        n = None if spec.limit is None else spec.skip + spec.limit
        return bundled_records(task, spec.split, seed=seed, n=n)
    except ValueError as exc:
        raise DataError(f"'{spec.source}' (split '{spec.split}'): {exc} (lower limit or skip).") from None
    except KeyError:
        corpora = "; ".join(f"{n} (splits {', '.join(s)})" for n, s in TEXTS.items())
        raise DataError(f"no bundled source '{task}' with split '{spec.split}'; bundled tasks: "
                        f"{', '.join(BUNDLED)} (splits train, validation, test); text corpora: "
                        f"{corpora}.") from None


def bundled_text(spec: DataSpec) -> str | None:
    """The text of a bundled corpus as its file reads (lines joined by newlines; ``spec.skip`` and
    ``spec.limit`` select lines), or None when ``spec`` names no bundled corpus. For readers of
    whole texts (perplexity, calibration)."""
    from layerif_core.tasks import TEXTS

    name = spec.source.split(":", 1)[1] if spec.source.startswith("bundled:") else None
    if name not in TEXTS:
        return None
    return "\n".join(r["text"] for r in load_records(spec)) + "\n"


def is_generated_task(source: str) -> bool:
    """Whether ``source`` is a bundled task generated from the run's seed."""
    from layerif_core.tasks import BUNDLED

    return source.startswith("bundled:") and source.split(":", 1)[1] in BUNDLED


def _local(spec: DataSpec, path: Path) -> list[dict[str, Any]]:
    import datasets

    if not path.is_file():
        raise DataError(f"data file '{spec.source}' does not exist; check the path.")
    if path.stat().st_size == 0:
        raise DataError(f"data file '{spec.source}' is empty; add examples to it.")
    fmt = _FORMATS.get(path.suffix)
    if fmt is None:
        raise DataError(f"data file '{spec.source}' has an unknown extension; use one of "
                        f"{', '.join(_FORMATS)}.")
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
        return [dict(r) for r in ds]  # strings are decoded here: non-UTF-8 bytes fail here
    except UnicodeDecodeError as exc:
        raise DataError(f"data file '{spec.source}' cannot be read as {fmt}: it is not UTF-8 "
                        f"({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except Exception as exc:  # datasets raises many types for a malformed file
        raise DataError(f"data file '{spec.source}' cannot be read as {fmt}: "
                        f"{str(exc).splitlines()[0]}") from None


def _hub(spec: DataSpec) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.source, spec.config_name, split=spec.split,
                                   data_files=spec.data_files)
    except (ConnectionError, OSError) as exc:
        raise DataError(f"cannot fetch hub dataset '{spec.source}' (offline? {type(exc).__name__}); "
                        "download it to a local jsonl/csv/parquet file and point data.source at "
                        "it.") from None
    except ValueError as exc:
        raise DataError(f"hub dataset '{spec.source}': {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise DataError(f"cannot load dataset '{spec.source}': {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]}; if it is a local file, check the path.") from None
    return [dict(r) for r in ds]


def _templates(spec: DataSpec) -> tuple[str | None, str | None, str | None]:
    prompt, completion, text = spec.prompt, spec.completion, spec.text
    if is_generated_task(spec.source) and not (prompt or completion or text):
        if spec.pack:
            return None, None, BUNDLED_PROMPT + BUNDLED_COMPLETION
        prompt, completion = BUNDLED_PROMPT, BUNDLED_COMPLETION
    if not (prompt or completion or text):
        text = "{text}"
    return prompt, completion, text


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _fill(template: str, record: dict[str, Any], spec: DataSpec, index: int) -> str:
    try:
        return template.format(**record)
    except (KeyError, IndexError):
        missing = [f for f in _fields(template) if f not in record]
        raise DataError(f"example {index} of '{spec.source}' lacks field(s) {missing} used by the "
                        f"template; its fields are {sorted(record)}. Fix the template.") from None


def tokenize_split(spec: DataSpec, tokenizer: Any, seed: int = 0, name: str | None = None,
                   max_context: int | None = None, reduction: str = "sum", padding: str = "none"
                   ) -> TokenizedSplit:
    """Load ``spec`` and tokenise it: ``prompt`` tokens are masked out of the loss when
    ``loss_on='completion'``; the EOS token ends each sequence when ``add_eos``. Records with no
    token in the loss are skipped (``n_skipped``, one warning); with ``spec.pack`` the texts are
    packed into windows of ``max_length`` tokens instead (:func:`pack_tokens`). ``reduction``
    ("sum" or "mean" over an example's loss tokens) is part of the split and of its fingerprint.
    ``padding="authors"``: truncation to ``max_length`` (``AUTHORS_MAX_LENGTH`` when the spec sets
    none), then :func:`pad_like_authors`; packed windows (of one length already) are left as they
    are."""
    if max_context is not None and spec.max_length is not None and spec.max_length > max_context:
        raise DataError(f"max_length {spec.max_length} of '{spec.source}' exceeds the model's "
                        f"context of {max_context} tokens; set max_length <= {max_context}.")
    max_length = spec.max_length or max_context or DEFAULT_MAX_LENGTH
    records = load_records(spec, seed)
    if spec.pack:
        return _packed_split(spec, tokenizer, records, max_length, name, reduction)
    if padding == "authors" and spec.max_length is None:
        max_length = min(AUTHORS_MAX_LENGTH, max_length)
    prompt_t, completion_t, text_t = _templates(spec)
    eos = [tokenizer.eos_token_id] if spec.add_eos and tokenizer.eos_token_id is not None else []
    all_ids, all_labels, kept, truncated, skipped = [], [], [], 0, 0
    for i, rec in enumerate(records):
        if completion_t is not None or prompt_t is not None:
            p_text, c_text = _fill(prompt_t or "", rec, spec, i), _fill(completion_t or "", rec, spec, i)
            if not (p_text + c_text).strip():
                skipped += 1
                continue
            p = tokenizer(p_text, add_special_tokens=False)["input_ids"]
            c = tokenizer(c_text, add_special_tokens=False)["input_ids"]
            ids = p + c + eos
            lab = ([IGNORE] * len(p) if spec.loss_on == "completion" else p) + c + eos
        else:
            text = _fill(text_t, rec, spec, i)
            if not text.strip():
                skipped += 1
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            lab = list(ids)
        if len(ids) > max_length:
            truncated += 1
            ids, lab = ids[:max_length], lab[:max_length]
        if sum(t != IGNORE for t in lab[1:]) == 0:  # the first token is never predicted
            skipped += 1
            continue
        all_ids.append(ids)
        all_labels.append(lab)
        kept.append(rec)
    if not all_ids:
        raise DataError(f"every one of the {len(records)} examples of '{spec.source}' (split "
                        f"'{spec.split}') is blank or has no token in the loss after truncation to "
                        f"{max_length}; raise max_length, shorten the prompts, or fix the data.")
    if skipped:
        log.warning("'%s' (split '%s'): skipped %d of %d examples with no token in the loss (blank, "
                    "or too short after truncation to %d tokens)", spec.source, spec.split, skipped,
                    len(records), max_length)
    attended = None
    if padding == "authors":
        all_ids, all_labels, attended = pad_like_authors(all_ids, all_labels, _eos_for_padding(
            tokenizer, spec))
    # the content the estimators see, not where it came from: the same examples read from another
    # path (or source spelling) reuse fitted factors and influences
    h = _content_hash(all_ids, all_labels, reduction, attended)
    return TokenizedSplit(name or spec.source, all_ids, all_labels, h, truncated, kept, skipped,
                          reduction, attended)


def _eos_for_padding(tokenizer: Any, spec: DataSpec) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError(f"scorer.loss.padding: authors pads '{spec.source}' with the EOS token and the "
                        "tokenizer has none; give the tokenizer an eos_token or set "
                        "scorer.loss.padding: none.")
    return tokenizer.eos_token_id


def _content_hash(ids: list[list[int]], labels: list[list[int]], reduction: str,
                  attended: list[int] | None = None) -> str:
    """The fingerprint of a split's content: its tokens, loss labels, loss reduction and (the
    authors' padding) the attended length of each example."""
    key = [ids, labels] if reduction == "sum" else [ids, labels, reduction]
    if attended is not None:
        key.append({"attended": attended})
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def pack_tokens(docs: list[list[int]], eos_id: int, max_length: int) -> list[list[int]]:
    """Documents' tokens, each followed by ``eos_id``, concatenated and cut into windows of exactly
    ``max_length`` tokens; the trailing partial window is dropped (as LM training data, calibration
    sets and the pruning literature's perplexity windows are cut)."""
    stream = [t for doc in docs for t in (*doc, eos_id)]
    return [stream[k:k + max_length] for k in range(0, len(stream) - max_length + 1, max_length)]


def _packed_split(spec: DataSpec, tokenizer: Any, records: list[dict[str, Any]], max_length: int,
                  name: str | None, reduction: str) -> TokenizedSplit:
    _, _, text_t = _templates(spec)
    if tokenizer.eos_token_id is None:
        raise DataError(f"pack: true for '{spec.source}' needs an EOS token between documents and the "
                        "tokenizer has none; set tokenizer.eos_token or pack: false.")
    texts = [_fill(text_t, rec, spec, i) for i, rec in enumerate(records)]
    texts = [t for t in texts if t.strip()]
    skipped = len(records) - len(texts)
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    windows = pack_tokens(docs, tokenizer.eos_token_id, max_length)
    if spec.windows is not None:
        if len(windows) < spec.windows:
            raise DataError(f"'{spec.source}' (split '{spec.split}') packs into {len(windows)} windows "
                            f"of {max_length} tokens, fewer than windows: {spec.windows}; give more "
                            "text (limit) or ask for fewer windows.")
        windows = windows[: spec.windows]
    if not windows:
        n = sum(len(d) + 1 for d in docs)
        raise DataError(f"'{spec.source}' (split '{spec.split}') packs into {n} tokens, fewer than "
                        f"one window of max_length {max_length}; lower max_length or give more text.")
    if skipped:
        log.warning("'%s' (split '%s'): skipped %d of %d records that are blank", spec.source,
                    spec.split, skipped, len(records))
    labels = [list(w) for w in windows]
    return TokenizedSplit(name or spec.source, windows, labels,
                          _content_hash(windows, labels, reduction), 0, [], skipped, reduction)
