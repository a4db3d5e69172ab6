"""``select``: the allocation to take, chosen among candidate arms on held-out data.

Each candidate ``c`` is a scorer, an allocator and its options (with select's ``sparsity`` set in
every candidate allocator that has that option, so all spend the same budget). For each, select
computes the candidate's layer scores, its allocation ``a_c``, applies the run's application (e.g.
Wanda pruning) to a deep copy of the base model and measures the held-out metric ``m`` on the
result; the run then applies the winner::

    c* = argmin_c m(apply(θ, a_c))      (better: lower; argmax with better: higher)

Equal values go to the candidate listed first. This is how the authors of a layer-wise rule choose
their own hyper-parameters (ATP's common difference β, AlphaPruning's ε): on held-out perplexity,
here over any set of rules at once. The held-out text must be disjoint from the calibration text and
from every reported metric's data (:mod:`layerif_core.allocators.select_check`).

Cost: Σ_c (scores of c) + C × (one application + one held-out evaluation), then the chosen
allocation is applied once more on the run's model by the normal stage (the application step cannot
take a model another step produced, and re-applying it costs one application, deterministic for a
given seed). Scores are shared between candidates with the same scoring config, across seeds where
the scorer does not use the seed, and with a study's other arms; held-out values are cached by
candidate, model, application, held-out evaluator, sparsity, task and, where any of these uses the
seed, the seed (:class:`~layerif_core.context.RunContext` ``cache_root``).

``choice_seed: s`` chooses once for every seed: the candidates are measured with seed s's data (its
calibration windows, its seeded scores), so every run of a study finds their held-out values cached
after the first, and the chosen candidate's allocation is then computed with the run's own seed,
the allocation its own arm would use. Its cost in a study of N seeds is C candidates once, instead
of C per seed: the way the authors of a rule tune its parameter (once per model and sparsity).

The run directory receives ``select.json`` (every candidate's held-out value, allocation, achieved
sparsity and seconds, and the choice; written only once every candidate ran) and
``select/<n>-<label>/`` (each candidate's application artifacts and ``metrics.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import time
from typing import Any

from layerif_core.allocators.options import SelectCandidate, SelectOptions
from layerif_core.allocators.select_check import candidate_config, check_select
from layerif_core.config import ComponentSpec, RunConfig, TaskSpec
from layerif_core.errors import BudgetError, ConfigError, LayerifError
from layerif_core.results import Allocation, LayerScores
from layerif_core.scoring_keys import key, scores_key, scores_use_seed, scoring_config, scoring_run_key

log = logging.getLogger("layerif")

FORMAT = 1
GRID_SUFFIX = re.compile(r" \((?:[A-Za-z_]\w* [^,()]+)(?:, [A-Za-z_]\w* [^,()]+)*\)$")  # "(epsilon 0.1)"
CACHE = "select"  # the folder under the cache root that keeps the candidates' held-out values
QUIET = ("save_model", "save_masks")  # application options select turns off for its candidates


class CandidateError(LayerifError):
    """A candidate of ``select`` failed while it ran."""


class Select:
    """The candidate whose allocation gives the best held-out metric (see the module docstring)."""

    conformance_application = ("prune", {"pruner": "magnitude", "save_model": False, "save_masks": False})

    def __init__(self, opts: SelectOptions):
        self.opts = opts

    def allocate(self, scores: LayerScores, weights: list[float] | None = None) -> Allocation:
        raise ConfigError("select prunes and evaluates each candidate, so it needs a run: use it as "
                          "the allocation of `layerif run`, `layerif prune` or `layerif study`.")

    def scoring_configs(self, config: RunConfig) -> list[RunConfig]:
        """The run configs whose layer scores this allocator reads (``layerif study --plan`` plans
        them as shared score stages)."""
        return candidate_configs(self.opts, config)

    def estimate(self, work: Any) -> Any:
        """Its own cost for ``layerif study --plan`` (:func:`estimate`)."""
        return estimate(self.opts, work)

    def heldout_stages(self, config: RunConfig) -> list[tuple[str, str, RunConfig, Any]]:
        """The candidates' measurements as shared stages of the plan: ``(key, label, candidate
        config, estimate(work))``, one per cache key (:func:`heldout_stages`)."""
        return [(k, f"select: {GRID_SUFFIX.sub('', label)}", c, lambda w: candidate_cost(self.opts, w))
                for k, label, c in heldout_stages(self.opts, config)]

    def allocate_in(self, ctx: Any, task: TaskSpec, scores: LayerScores, weights: list[float] | None
                    ) -> Allocation:
        """Try every candidate on ``task`` and return the allocation of the best (the run's own
        ``scores`` are not used: each candidate brings its scorer)."""
        check_select(self.opts, ctx.config)
        forget_choice(ctx, task.name)  # a failure below leaves no earlier choice behind
        seed = self.opts.choice_seed
        probe = ctx if seed is None else dataclasses.replace(
            ctx, config=ctx.config.model_copy(update={"seed": seed}))
        tried, indices, infeasible = [], [], {}
        for index, candidate in enumerate(self.opts.candidates):
            try:
                tried.append(self.try_candidate(probe, task, candidate, index, weights))
                indices.append(index)
            except BudgetError as exc:  # a grid point this budget rules out: not a choice
                if candidate.grid_point is None:
                    raise BudgetError(f"select candidate '{candidate.label}' failed: {exc}") from exc
                infeasible[candidate.label] = str(exc)
                log.warning("select: candidate '%s' skipped: %s", candidate.label, exc)
            except LayerifError as exc:
                raise type(exc)(f"select candidate '{candidate.label}' failed: {exc}") from exc
            except Exception as exc:
                raise CandidateError(f"select candidate '{candidate.label}' failed: {type(exc).__name__}: "
                                     f"{exc}; fix or remove that candidate (--debug shows where).") from exc
        if not tried:
            raise BudgetError(f"select: no candidate meets the budget at sparsity {self.opts.sparsity} "
                              f"({'; '.join(infeasible.values())}); widen the grids.")
        best = choose([t["value"] for t in tried], self.opts.better)
        chosen = tried[best]
        record = {"format": FORMAT, "task": task.name, "metric": self.metric_name(tried[0]),
                  "better": self.opts.better, "sparsity": self.opts.sparsity,
                  "rule": f"arg{'min' if self.opts.better == 'lower' else 'max'} of the held-out metric "
                          "over the candidates; equal values: the first listed",
                  "chosen": chosen["label"], "choice_seed": seed, "candidates": tried,
                  "infeasible": infeasible}
        alloc = chosen["allocation"]
        if seed is not None and seed != ctx.config.seed:  # the chosen rule with this run's data
            from layerif_core.registry import get_registry

            cfg = candidate_config(ctx.config, self.opts.candidates[indices[best]], self.opts.sparsity)
            allocator = get_registry().build("allocator", cfg.allocation.name, cfg.allocation.options)
            alloc = allocator.allocate(candidate_scores(ctx, cfg, task)[0], weights).to_json()
            record["applied_allocation"] = alloc
        write_choice(ctx, task.name, record)
        log.info("select: '%s' (%s %.6g) of %d candidates", chosen["label"], record["metric"],
                 chosen["value"], len(tried))
        choice = {"chosen": chosen["label"], "candidate_allocator": alloc["allocator"], "choice_seed": seed,
                  "metric": record["metric"], "better": self.opts.better,
                  "values": {t["label"]: t["value"] for t in tried},
                  **({"infeasible": sorted(infeasible)} if infeasible else {})}
        return Allocation(alloc["kind"], alloc["values"], f"select:{chosen['label']}",
                          {**alloc["details"], "select": choice})

    def metric_name(self, tried: dict[str, Any]) -> str:
        return self.opts.metric or next(iter(tried["heldout"]))

    def value(self, heldout: dict[str, float]) -> float:
        """The compared metric among the held-out evaluator's (``metric``; default its first)."""
        metric = self.opts.metric or next(iter(heldout))
        if metric not in heldout:
            raise ConfigError(f"select's metric '{metric}' is not among the held-out evaluator's metrics "
                              f"{sorted(heldout)}; set metric to one of them.")
        return float(heldout[metric])

    def try_candidate(self, ctx: Any, task: TaskSpec, candidate: SelectCandidate, index: int,
                      weights: list[float] | None) -> dict[str, Any]:
        """One candidate's scores, allocation, application and held-out value (cached)."""
        from layerif_core.registry import get_registry

        cfg = candidate_config(ctx.config, candidate, self.opts.sparsity)
        heldout = ComponentSpec(name=self.opts.heldout.name, options=self.opts.heldout.options)
        reg = get_registry()
        seeded, what = heldout_identity(self.opts, cfg, task)
        value_key = key({**what, "model": ctx.model_fingerprint, "weights": weights})
        path = ctx.cache_root / CACHE / f"{value_key}.json"
        found = None if ctx.run_dir.force else read_json(path)
        if found is not None:
            log.info("select: candidate '%s' reused from %s", candidate.label, path)
            return {**found, "label": candidate.label, "value": self.value(found["heldout"]),
                    "reused": {"scores": True, "heldout": True}}
        start = time.perf_counter()
        cand_scores, reused = candidate_scores(ctx, cfg, task)
        score_seconds = time.perf_counter() - start
        allocator = reg.build("allocator", cfg.allocation.name, cfg.allocation.options)
        allocation = allocator.allocate(cand_scores, weights)
        heldout_metrics, applied = self.apply_and_measure(ctx, task, cfg, heldout, allocation, index,
                                                          candidate.label)
        result = {"label": candidate.label, "scorer": cfg.scorer.name, "allocator": cfg.allocation.name,
                  "allocator_options": cfg.allocation.options, "value": self.value(heldout_metrics),
                  "heldout": heldout_metrics, "achieved_sparsity": applied.metrics.get("sparsity/achieved"),
                  "allocation": allocation.to_json(),
                  "seconds": {"scores": round(score_seconds, 3), **applied.seconds},
                  "reused": {"scores": reused, "heldout": False}, "seeded": seeded,
                  "scores_key": scores_key(cfg), "heldout_key": value_key,
                  "identity": key(what)}  # the key `layerif study --plan` prices it by
        write_json(ctx, path, result)
        return result

    def apply_and_measure(self, ctx: Any, task: TaskSpec, cfg: RunConfig, heldout: ComponentSpec,
                          allocation: Allocation, index: int, label: str) -> tuple[dict[str, float], Any]:
        """The run's application on a deep copy of the base model, then the held-out evaluator.

        A deep copy, not a snapshot of the weights restored afterwards: an application may change
        the model's structure (LoRA-MoE wraps it, pruning removes a scoring adapter), which restoring
        weights would not undo. It costs one more copy of the weights while a candidate runs."""
        from layerif_core.apply import application_metrics, apply_allocation
        from layerif_core.artifacts import RunDir
        from layerif_core.layers import LayerMap

        run_cfg = cfg.model_copy(update={"application": quiet(cfg.application), "evaluation": [heldout],
                                         "name": f"{ctx.config.name}-select"})
        run_dir = RunDir(ctx.run_dir.path / "select" / f"{index:02d}-{slug(label)}", force=ctx.run_dir.force)
        model = copy.deepcopy(ctx.model)
        try:
            target = dataclasses.replace(ctx, config=run_cfg, model=model,
                                         layer_map=LayerMap(model, run_cfg.layers), run_dir=run_dir)
            applied = apply_allocation(target, task, allocation, model, ctx.tokenizer)
            own = application_metrics(applied.application)
            found = {k: float(v) for k, v in applied.metrics.items() if k not in own}
            if not found:
                raise ConfigError(f"select's heldout evaluator '{heldout.name}' returned no metric; "
                                  "choose an evaluator that measures the model.")
            return found, applied
        finally:
            del model
            run_dir.close()


def quiet(app: ComponentSpec | None) -> ComponentSpec | None:
    """The application spec for a candidate: its ``save_model``/``save_masks`` options off where it
    has them (a candidate's pruned model is measured, not kept)."""
    from layerif_core.registry import get_registry

    if app is None:
        return None
    cls = get_registry().get("application", app.name).options_class
    fields = cls.model_fields if cls is not None else {}
    return app.model_copy(update={"options": {**app.options, **{k: False for k in QUIET if k in fields}}})


def candidate_scores(ctx: Any, cfg: RunConfig, task: TaskSpec) -> tuple[LayerScores, bool]:
    """A candidate's layer scores of ``task``: from ``<cache>/scores/<key>.json`` when a run with the
    same scoring config made them (a study's other arms, another candidate, another seed where
    the scorer does not use it), else computed on the run's model and written there."""
    from layerif_core.artifacts import RunDir, read_scores
    from layerif_core.layers import LayerMap
    from layerif_core.scoring import score_task

    scoring = scoring_config(cfg)
    path = ctx.cache_root / "scores" / f"{scores_key(cfg)}.json"
    if path.is_file() and not ctx.run_dir.force:
        found = read_scores(path, len(ctx.layer_map))
        if task.name in found:
            return found[task.name], True
    run_dir = RunDir(ctx.cache_root / "runs" / scoring_run_key(scoring), force=ctx.run_dir.force)
    try:
        scored = dataclasses.replace(ctx, config=cfg.model_copy(update={"seed": scoring["seed"]}),
                                     layer_map=LayerMap(ctx.model, cfg.layers), run_dir=run_dir, task=None)
        scores = score_task(scored, task)
        run_dir.save_manifest()
    finally:
        run_dir.close()
    write_json(ctx, path, {task.name: scores.to_json()})
    return scores, False


def choose(values: list[float], better: str) -> int:
    """Index of the best value (lowest or highest; a non-finite value is the worst; ties: first)."""
    sign = 1.0 if better == "lower" else -1.0
    ranked = [sign * v if math.isfinite(v) else math.inf for v in values]
    return ranked.index(min(ranked))


def slug(label: str) -> str:
    """``label`` as a directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "candidate"


def read_json(path: Any) -> dict[str, Any] | None:
    import json

    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "value" in found else None


def write_json(ctx: Any, path: Any, data: Any) -> None:
    """Write a cache entry atomically; inside the run directory through it (so that it is a recorded
    artifact, which a failed run's clean-up keeps), elsewhere (a study's ``shared/``) directly."""
    import json

    from layerif_core.atomic import atomic_path

    if path.is_relative_to(ctx.run_dir.path):
        ctx.run_dir.write_json(path.relative_to(ctx.run_dir.path).as_posix(), data)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def forget_choice(ctx: Any, task: str) -> None:
    """Drop ``task``'s entry from ``select.json`` before the candidates run."""
    found = ctx.run_dir.read_json("select.json")
    if isinstance(found, dict) and task in found:
        found.pop(task)
        ctx.run_dir.write_json("select.json", found)


def write_choice(ctx: Any, task: str, record: dict[str, Any]) -> None:
    """``select.json``: task → its candidates and choice (atomic, like ``allocation.json``)."""
    found = ctx.run_dir.read_json("select.json")
    found = found if isinstance(found, dict) else {}
    found[task] = record
    ctx.run_dir.write_json("select.json", found)


def estimate(opts: SelectOptions, work: Any) -> Any:
    """What a run of select costs besides its candidates' measurements: the base model and one
    candidate's copy in memory. The measurements (one application and one held-out evaluation each)
    and the candidates' scores are shared stages of the plan (:meth:`Select.heldout_stages`,
    :meth:`Select.scoring_configs`), priced once per cache key as the runs reuse them."""
    from layerif_core.cost import Cost

    return Cost(peak_bytes=2 * work.weights())


def candidate_cost(opts: SelectOptions, work: Any) -> Any:
    """One candidate's measurement (``work``: its run config): one application and one held-out
    evaluation, on a copy of the model beside the base model."""
    from layerif_core.cost import Cost
    from layerif_core.estimates import component_cost

    total = Cost(peak_bytes=2 * work.weights())
    parts = [component_cost(work, "evaluator", opts.heldout.name, opts.heldout.options)]
    if work.config.application is not None:
        parts.insert(0, component_cost(work, "application", work.config.application.name,
                                       work.config.application.options))
    for part in parts:  # on the copy of the model, beside the base model
        total = total + dataclasses.replace(part, peak_bytes=part.peak_bytes + work.weights())
    return total


def heldout_identity(opts: SelectOptions, cfg: RunConfig, task: TaskSpec) -> tuple[bool, dict[str, Any]]:
    """Whether a candidate's held-out value can change with the seed, and what else decides it (with
    the model and the layer weights: its cache key). ``cfg`` is the candidate's run config."""
    from layerif_core.registry import get_registry

    reg = get_registry()
    heldout = ComponentSpec(name=opts.heldout.name, options=opts.heldout.options)
    seeded = (scores_use_seed(cfg) or reg.uses_seed("application", cfg.application, cfg)
              or reg.uses_seed("evaluator", heldout, cfg))
    return seeded, {"scoring": scoring_config(cfg), "allocation": cfg.allocation.model_dump(),
                    "application": cfg.application.model_dump() if cfg.application else None,
                    "heldout": heldout.model_dump(), "sparsity": opts.sparsity,
                    "task": task.model_dump(), "seed": cfg.seed if seeded else None}


def heldout_stages(opts: SelectOptions, config: RunConfig) -> list[tuple[str, str, RunConfig]]:
    """Each candidate's measurement as ``layerif study --plan`` prices it, once per key: the key
    (the cache's, less the model and layer weights, which are one study's throughout; with
    ``choice_seed`` the seed is that one), its label and its run config."""
    base = config if opts.choice_seed is None else config.model_copy(update={"seed": opts.choice_seed})
    task = next(t for t in base.tasks if t.name == base.application_task("select"))
    out = []
    for candidate, cfg in zip(opts.candidates, candidate_configs(opts, base), strict=True):
        out.append((key(heldout_identity(opts, cfg, task)[1]), candidate.label, cfg))
    return out


def candidate_configs(opts: SelectOptions, config: RunConfig) -> list[RunConfig]:
    """Each candidate's run config: the run's, with the candidate's scorer, layers and allocator."""
    return [candidate_config(config, candidate, opts.sparsity) for candidate in opts.candidates]
