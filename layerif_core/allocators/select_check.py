"""What ``select`` checks before any model loads (``check_components`` → ``SelectOptions.check_config``).

- Every candidate is a valid run on its own: its scorer (with estimator and aggregator), its
  allocator and their options, checked as a run config with the candidate's sections in place of
  the run's, so a study refuses a bad candidate before it loads a model.
- The held-out data are held out. Data are identified by their source and split (a ``.txt`` file by
  its path alone; splits of one source are taken as disjoint, as datasets publish them) and a range
  of records ``[skip, skip + limit)``. The held-out evaluator must read its text through a
  ``source`` option (perplexity), and

  * it must not read the source and split of any ``evaluation:`` evaluator (the reported metric is
    measured on data the choice never saw), whatever their ranges;
  * it must not read the source and split of the prune calibration (``calibration.source``, else
    the applied task's train split) unless their record ranges provably do not overlap, e.g.
    calibration ``limit: N`` and held-out ``skip: N`` or more.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerif_core.config import ComponentSpec, RunConfig
from layerif_core.errors import ConfigError, LayerifError


@dataclass(frozen=True)
class DataRange:
    """Records ``[start, stop)`` (``stop`` None: to the end) of one source and split."""

    source: str
    split: str
    start: int = 0
    stop: int | None = None

    def same_data(self, other: DataRange) -> bool:
        return (self.source, self.split) == (other.source, other.split)

    def overlaps(self, other: DataRange) -> bool:
        if not self.same_data(other):
            return False
        below = self.stop is not None and self.stop <= other.start
        above = other.stop is not None and other.stop <= self.start
        return not (below or above)

    def describe(self) -> str:
        part = f" split '{self.split}'" if self.split else ""
        stop = "end" if self.stop is None else self.stop
        return f"'{self.source}'{part} records [{self.start}, {stop})"


def data_range(source: str, split: str | None, skip: int = 0, limit: int | None = None) -> DataRange:
    """The records a reader of ``source`` takes: a ``.txt`` file whole (its split ignored), else
    ``[skip, skip + limit)`` of the split. Local paths compare by their resolved path."""
    path = Path(source).expanduser()
    name = str(path.resolve()) if path.exists() else source
    if path.suffix == ".txt":
        return DataRange(name, "", 0, None)
    return DataRange(name, split or "", skip, None if limit is None else skip + limit)


def evaluator_range(options: dict[str, Any]) -> DataRange | None:
    """The text an evaluator reads, from its ``source``/``split``/``skip``/``limit`` options (the
    perplexity evaluator's); None for one that names no source (lm_eval reads its tasks' data)."""
    if "source" not in options:
        return None
    return data_range(str(options["source"]), options.get("split", "test"), int(options.get("skip") or 0),
                      options.get("limit"))


def calibration_range(config: RunConfig) -> DataRange | None:
    """The calibration text of an application whose options have a ``calibration`` section (prune):
    its ``source``, else the applied task's train split; None for an application without one."""
    from layerif_core.registry import get_registry

    app = config.application
    if app is None:
        return None
    opts = get_registry().get("application", app.name).options(app.options)
    cal = getattr(opts, "calibration", None)
    if cal is None:
        return None
    if getattr(cal, "source", None) is not None:
        return data_range(str(cal.source), getattr(cal, "split", "train"), getattr(cal, "skip", 0),
                          getattr(cal, "limit", None))
    task = next((t for t in config.tasks if t.name == config.application_tasks()[0]), config.tasks[0])
    return data_range(task.train.source, task.train.split, task.train.skip, task.train.limit)


def candidate_config(config: RunConfig, candidate: Any, sparsity: float | None) -> RunConfig:
    """The run as this candidate alone would be configured: its scorer, allocator (with select's
    sparsity where its allocator has that option) and layers in place of the run's."""
    from layerif_core.registry import get_registry

    options = dict(candidate.allocation.options)
    if sparsity is not None:
        cls = get_registry().get("allocator", candidate.allocation.name).options_class
        if cls is not None and "sparsity" in cls.model_fields:
            if "sparsity" in options and options["sparsity"] != sparsity:
                raise ConfigError(f"select candidate '{candidate.label}' sets sparsity {options['sparsity']} "
                                  f"but select's is {sparsity}; remove it from the candidate (select "
                                  "gives every candidate the same budget).")
            options["sparsity"] = sparsity
    return config.model_copy(update={
        "scorer": candidate.scorer, "layers": candidate.layers or config.layers,
        "allocation": ComponentSpec(name=candidate.allocation.name, options=options)})


def check_select(opts: Any, config: RunConfig) -> None:
    """Refuse, in one line naming the candidate or the fix, what ``select`` cannot run."""
    from layerif_core.registry import check_components

    if config.application is None:
        raise ConfigError("select applies each candidate with the run's application; add an "
                          "`application:` section (e.g. prune).")
    for candidate in opts.candidates:
        what = f"select candidate '{candidate.label}'"
        if candidate.allocation.name == "select":
            raise ConfigError(f"{what} is itself a select; list its candidates in the outer one.")
        try:
            cfg = candidate_config(config, candidate, opts.sparsity)
            if cfg.layers.lora_only:
                raise ConfigError("it scores LoRA tensors (layers.lora_only), which select does not "
                                  "fine-tune; give it layers without lora_only")
            check_components(cfg)
        except LayerifError as exc:
            message = str(exc)
            if message.startswith(what):
                raise
            raise type(exc)(f"{what}: {message}") from None
    check_heldout(opts, config)


def check_heldout(opts: Any, config: RunConfig) -> None:
    """The held-out evaluator exists, takes its options, and reads data held out from the
    evaluation and the calibration."""
    from layerif_core.registry import get_registry

    spec = opts.heldout
    get_registry().get("evaluator", spec.name).options(spec.options)
    held = evaluator_range(spec.options)
    if held is None:
        raise ConfigError(f"select's heldout evaluator '{spec.name}' names no `source`, so select "
                          "cannot check that its data are held out; use an evaluator that reads a "
                          "source, e.g. perplexity.")
    for ev in config.evaluation:
        found = evaluator_range(ev.options)
        if found is not None and found.same_data(held):
            raise ConfigError(f"select's heldout data {held.describe()} are those of the evaluation "
                              f"'{ev.name}' ({found.describe()}); choose another split or source for "
                              "heldout (e.g. the validation split when evaluating on test).")
    cal = calibration_range(config)
    if cal is not None and cal.overlaps(held):
        raise ConfigError(f"select's heldout data {held.describe()} overlap the prune calibration "
                          f"{cal.describe()}; set the calibration's limit and heldout skip >= it, "
                          "or use another split for heldout.")
