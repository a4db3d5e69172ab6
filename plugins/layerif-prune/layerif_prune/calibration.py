"""Calibration windows: ``samples`` random spans of ``seqlen`` tokens of a text, seeded.

As Wanda's and SparseGPT's loaders do for C4 and WikiText: the text is tokenised once and each window
starts at a uniformly random position (``torch.Generator`` seeded with the run's seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from layerif_core.config import DataSpec, TaskSpec
from layerif_core.data import BUNDLED_COMPLETION, BUNDLED_PROMPT, bundled_text, load_records, tokenize_split
from layerif_core.errors import DataError
from layerif_prune.options import CalibrationSpec


def calibration_tokens(spec: CalibrationSpec, tokenizer: Any, task: TaskSpec | None, seed: int = 0
                       ) -> tuple[torch.Tensor, str]:
    """The whole calibration token stream ``[N]`` and a name for messages."""
    if spec.source is None:
        if task is None:
            raise DataError("pruning needs calibration data; set application.options.calibration.source.")
        split = tokenize_split(task.train, tokenizer, seed, f"{task.name}/train")
        return torch.tensor([t for ids in split.input_ids for t in ids]), f"task '{task.name}' train"
    path = Path(spec.source).expanduser()
    corpus = bundled_text(DataSpec(source=spec.source, split=spec.split, skip=spec.skip, limit=spec.limit))
    if corpus is not None:  # a bundled corpus (bundled:wikitext2) reads as its file does
        text = corpus
    elif path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"calibration file '{spec.source}' does not exist; check the path.")
        text = path.read_text(encoding="utf-8")
    else:
        records = load_records(DataSpec(source=spec.source, split=spec.split,
                                        config_name=spec.config_name, data_files=spec.data_files,
                                        skip=spec.skip, limit=spec.limit), seed)
        template = spec.text
        if spec.source.startswith("bundled:") and template == "{text}":
            template = BUNDLED_PROMPT + BUNDLED_COMPLETION
        try:
            text = "\n\n".join(template.format(**r) for r in records)
        except KeyError as exc:
            raise DataError(f"records of '{spec.source}' lack field {exc} used by the calibration "
                            f"template '{template}'; their fields are {sorted(records[0])}. Set "
                            "calibration.text.") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), f"'{spec.source}'"


def calibration_windows(tokens: torch.Tensor, samples: int, seqlen: int, seed: int, name: str = "data"
                        ) -> torch.Tensor:
    """``samples`` windows ``[samples, seqlen]`` at seeded random offsets of ``tokens``."""
    n = int(tokens.numel())
    if n < seqlen:
        raise DataError(f"calibration data {name} has {n} tokens, shorter than the sequence length "
                        f"{seqlen}; lower calibration.seqlen or give more text.")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen + 1, (samples,), generator=g)
    return torch.stack([tokens[s:s + seqlen] for s in starts.tolist()])
