"""lm-evaluation-harness tasks on the in-memory model (no reload from disk).

The model and tokenizer a run holds (pruned, LoRA-MoE trained, or freshly loaded) are wrapped in
lm-eval's ``HFLM`` and evaluated with ``lm_eval.simple_evaluate``. Task YAMLs shipped in
``layerif_eval/tasks`` (the bundled demo tasks as multiple-choice tasks over local jsonl) and any
``include_path`` directories are indexed first; lm-eval's own catalogue (about 8 s to index) is only
read when a task is not found there. Tasks defined only by local files run with the Hugging Face
hub switched off, so a task that would need the hub fails at once with a message instead of hanging.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from layerif_core.errors import ConfigError, DataError, ModelError
from layerif_eval.options import LmEvalOptions
from layerif_eval.perplexity import record_provenance

log = logging.getLogger("layerif")

TASKS_DIR = Path(__file__).parent / "tasks"


def task_paths(opts: LmEvalOptions) -> list[Path]:
    """The shipped task directory plus the user's ``include_path`` entries (each must exist)."""
    paths = [TASKS_DIR]
    for p in opts.include_path:
        path = Path(p).expanduser()
        if not path.exists():
            raise ConfigError(f"lm_eval include_path '{p}' does not exist; point it to a directory "
                              "(or file) of task YAMLs.")
        paths.append(path)
    return paths


def _is_yaml_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def task_manager(opts: LmEvalOptions) -> tuple[Any, bool]:
    """A ``TaskManager`` that knows every requested task, and whether all of them are local.

    Local tasks are looked up without lm-eval's catalogue; an unknown name is reported with the
    closest names of the local tasks and the catalogue.
    """
    from lm_eval.tasks import TaskManager

    paths = task_paths(opts)
    for name in opts.tasks:
        if _is_yaml_path(name) and not Path(name).expanduser().is_file():
            raise ConfigError(f"lm_eval task file '{name}' does not exist; check the path.")
    local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
    missing = [t for t in opts.tasks if not _is_yaml_path(t) and t not in local.all_tasks]
    if not missing:
        return local, True
    full = TaskManager(include_path=[str(p) for p in paths])
    unknown = [t for t in missing if t not in full.all_tasks]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, full.all_tasks, n=5, cutoff=0.6)
        hint = f" (close names: {', '.join(close)})" if close else ""
        raise ConfigError(f"lm-eval does not know the task '{name}'{hint}; list tasks with "
                          "`lm-eval ls tasks`, or define it in a YAML file given in include_path.")
    return full, False


@contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Switch the Hugging Face hub off for ``datasets`` and ``huggingface_hub`` (both read their
    offline flag at import time, so the module constants are set too), restoring them after."""
    if not enabled:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcst

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved = (dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcst.HF_HUB_OFFLINE)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = hcst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcst.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def lm_eval_console(show_progress: bool) -> Iterator[None]:
    """lm-eval's console output while it runs: its progress bars (and datasets') only when the run
    shows progress (``sys.stderr`` is discarded otherwise, e.g. in a study's cells), and no
    ``fatal: not a git repository`` from the ``git describe`` it runs to record a commit (that
    command's stderr is discarded; outside a checkout the hash is None)."""
    import subprocess
    from contextlib import ExitStack, redirect_stderr

    import lm_eval.evaluator as evaluator

    def git_hash() -> str | None:
        try:
            out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True,
                                 check=False)
        except OSError:
            return None
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = git_hash
    try:
        with ExitStack() as stack:
            if not show_progress:
                stack.enter_context(redirect_stderr(stack.enter_context(open(os.devnull, "w"))))
            yield
    finally:
        evaluator.get_git_commit_hash = saved


def _hub_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed attempt to reach the Hugging Face hub."""
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}"
        if isinstance(seen, ConnectionError) or any(
            s in text for s in ("OfflineMode", "offline", "Couldn't reach", "LocalEntryNotFound",
                                "DatasetNotFound", "huggingface.co")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """``lm_eval/<task>/<metric>`` floats from lm-eval's ``results`` and ``groups`` sections.

    lm-eval keys a metric as ``"<metric>,<filter>"``; the filter is kept only when it is not
    ``none`` (``acc`` vs ``exact_match[strict-match]``).
    """
    out: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, values in (results.get(section) or {}).items():
            for key, value in values.items():
                if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                metric, filt = key.split(",", 1)
                name = metric if filt == "none" else f"{metric}[{filt}]"
                out[f"lm_eval/{task}/{name}"] = float(value)
    return out


def task_provenance(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: the version, few-shot count and sample counts that lm-eval reports."""
    versions = results.get("versions") or {}
    nshot = results.get("n-shot") or {}
    samples = results.get("n-samples") or {}
    return {task: {"version": versions.get(task), "n-shot": nshot.get(task),
                   "samples": samples.get(task)} for task in sorted(versions)}


class LmEval:
    """lm-evaluation-harness tasks on the in-memory model and tokenizer through ``HFLM``."""

    def __init__(self, opts: LmEvalOptions):
        self.opts = opts
        self.report: dict[str, Any] = {}

    def estimate(self, work):
        """What the evaluation will cost (``layerif study --plan``; :mod:`layerif_eval.cost`)."""
        from layerif_eval.cost import lm_eval

        return lm_eval(self.opts, work)

    def evaluate(self, ctx: Any, model: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        opts = self.opts
        manager, all_local = task_manager(opts)
        offline = all_local if opts.offline is None else opts.offline
        batch_size = opts.batch_size or getattr(ctx, "batch_size", 1)
        from layerif_eval.shared_context import SharedContextHFLM

        model_class = SharedContextHFLM if opts.shared_context else HFLM
        try:
            lm = model_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                      max_length=opts.max_length)
        except AssertionError:
            raise ModelError(f"lm-eval needs a transformers tokenizer, got {type(tokenizer).__name__}; "
                             "load the model through layerif (model.source).") from None
        limit = int(opts.limit) if opts.limit is not None and opts.limit >= 1 else opts.limit
        was_training = model.training
        try:
            with hub_offline(offline), lm_eval_console(getattr(ctx, "show_progress", True)):
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=list(opts.tasks), num_fewshot=opts.num_fewshot, limit=limit,
                    task_manager=manager, log_samples=False, bootstrap_iters=opts.bootstrap_iters,
                    apply_chat_template=opts.apply_chat_template,
                )
        except Exception as exc:
            if not _hub_failure(exc):
                if isinstance(exc, FileNotFoundError):
                    raise DataError(f"lm-eval task data not found ({str(exc).splitlines()[0]}); check "
                                    "`dataset_kwargs.data_files` in the task YAML.") from None
                raise
            where = "with the hub switched off" if offline else "because the hub cannot be reached"
            raise DataError(f"lm-eval task(s) {', '.join(opts.tasks)} need data from the Hugging Face "
                            f"hub, which failed {where}; download the data and point the task at local "
                            "files (a YAML with `dataset_path: json` and `dataset_kwargs: {data_files: "
                            "...}` in include_path), or set offline=false on a machine with access."
                            ) from None
        finally:
            model.train(was_training)
        if results is None:
            raise DataError("lm-eval returned no results (a distributed worker process?); run "
                            "evaluation in a single process.")
        self.report = {
            "evaluator": "lm_eval", "provider": "layerif-eval", "version": _version("layerif-eval"),
            "lm_eval_version": _version("lm_eval"), "options": opts.model_dump(),
            "batch_size": batch_size, "num_fewshot": opts.num_fewshot, "offline": offline,
            "tasks": task_provenance(results),
        }
        record_provenance(ctx, "lm_eval", self.report)
        return flatten_results(results)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"
