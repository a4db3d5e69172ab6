"""The bundled demo tasks as lm-eval multiple-choice tasks over local jsonl.

``layerif_core.tasks.bundled_records`` generates each task's records from a seed; here they are
written once per (task, generator version, seed, split sizes) as jsonl under
``$LAYERIF_CACHE/lm_eval/`` and read back with the ``datasets`` json loader, so the tasks run with no
network. The task YAMLs in ``tasks/`` point to :func:`load_bundled` through lm-eval's
``custom_dataset: !function`` and set the split sizes in ``dataset_kwargs`` (``layerif_arithmetic``:
2,000 test and 500 validation questions; the evaluator's ``limit`` takes the first N of them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerif_core.artifacts import atomic_path
from layerif_core.models import cache_dir

SPLITS = ("train", "validation", "test")


def bundled_jsonl(task: str, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Paths of the jsonl files of bundled ``task`` (one per split, ``sizes[split]`` records or the
    generator's default), written if missing."""
    from layerif_core.tasks import bundled_records
    from layerif_core.tasks.generate import SPLIT_SIZES, VERSIONS

    counts = {split: (sizes or {}).get(split) or SPLIT_SIZES[split] for split in SPLITS}
    folder = cache_dir() / "lm_eval" / f"{task}-v{VERSIONS[task]}-seed{seed}"
    paths = {}
    for split in SPLITS:
        path = folder / f"{split}-{counts[split]}.jsonl"
        if not path.is_file():
            records = bundled_records(task, split, seed=seed, n=counts[split])
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths[split] = path
    return paths


def load_bundled(task: str, seed: int = 0, train_size: int | None = None,
                 validation_size: int | None = None, test_size: int | None = None, **_: Any):
    """A ``datasets.DatasetDict`` of bundled ``task`` (train/validation/test), from local jsonl.

    lm-eval calls this with the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments;
    only ``task``, ``seed`` and the ``*_size`` of each split are used.
    """
    import datasets

    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    files = {split: str(p) for split, p in bundled_jsonl(task, int(seed), {
        k: int(v) for k, v in sizes.items() if v is not None}).items()}
    return datasets.load_dataset("json", data_files=files)
