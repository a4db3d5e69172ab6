"""What every component receives: the config, the model, the layer map, the run directory, and
progress reporting (architecture §3 ``ctx``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from layerif_core.artifacts import RunDir
from layerif_core.config import RunConfig, TaskSpec
from layerif_core.layers import LayerMap

T = TypeVar("T")


@dataclass
class RunContext:
    """The state of one run, handed to estimators, scorers, applications and evaluators."""

    config: RunConfig
    model: torch.nn.Module
    tokenizer: Any
    layer_map: LayerMap
    run_dir: RunDir
    model_fingerprint: str
    show_progress: bool = True
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("layerif"))
    task: TaskSpec | None = None  # the task whose allocation is applied (pipeline.apply_allocation)
    cache_dir: Path | None = None  # shared caches across runs (a study's shared/); see `cache_root`

    @property
    def cache_root(self) -> Path:
        """Where work that other runs can reuse is kept (``select``'s candidate scores and held-out
        values): the study's ``shared/`` directory in a study cell (set by the study runner), else
        ``<run>/cache`` (a rerun of the run, or another seed written to the same run directory,
        reuses it)."""
        return self.cache_dir if self.cache_dir is not None else self.run_dir.path / "cache"

    @property
    def applied_task(self) -> TaskSpec:
        """The task an application acts for: the one whose allocation it received (``apply_to``),
        set by :func:`~layerif_core.pipeline.apply_allocation`; the config's first task when the
        application is called directly. Its data are the application's default data (LoRA-MoE
        training and validation, pruning calibration, LoRA-ranks fine-tuning)."""
        return self.task if self.task is not None else self.config.tasks[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        """Iterate with a progress bar (rich) unless progress is off."""
        if not self.show_progress:
            yield from items
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)
