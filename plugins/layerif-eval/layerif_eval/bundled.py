"""The bundled demo tasks as lm-eval multiple-choice tasks over local jsonl.

``layerif_core.tasks.bundled_records`` generates each task's records from a seed; here they are
written once per (task, seed) as jsonl under ``$LAYERIF_CACHE/lm_eval/`` and read back with the
``datasets`` json loader, so the tasks run with no network. The task YAMLs in ``tasks/`` point to
:func:`load_bundled` through lm-eval's ``custom_dataset: !function``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerif_core.artifacts import atomic_path
from layerif_core.models import cache_dir

SPLITS = ("train", "validation", "test")


def bundled_jsonl(task: str, seed: int = 0) -> dict[str, Path]:
    """Paths of the jsonl files of bundled ``task`` (one per split), written if missing."""
    from layerif_core.tasks import bundled_records

    folder = cache_dir() / "lm_eval" / f"{task}-seed{seed}"
    paths = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            records = bundled_records(task, split, seed=seed)
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths[split] = path
    return paths


def load_bundled(task: str, seed: int = 0, **_: Any):
    """A ``datasets.DatasetDict`` of bundled ``task`` (train/validation/test), from local jsonl.

    lm-eval calls this with the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments;
    only ``task`` and ``seed`` are used.
    """
    import datasets

    files = {split: str(p) for split, p in bundled_jsonl(task, int(seed)).items()}
    return datasets.load_dataset("json", data_files=files)
