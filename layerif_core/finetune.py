"""LoRA fine-tuning with peft (`layerif finetune`): the first step of the LayerIF paper's route.

The paper fine-tunes the model with LoRA on a task's training split, then measures DataInf influence
through each block's LoRA parameters (``datainf`` with ``layers.lora_only``). This module trains that
adapter: AdamW on the LoRA parameters, the mean token cross-entropy over the loss tokens (the answer
tokens with ``loss_on: completion``), gradient accumulation, a linear or constant schedule with
warm-up, and the adapter saved in peft's format (``adapter_config.json`` +
``adapter_model.safetensors``), loadable with ``model.adapter`` or ``PeftModel.from_pretrained``.

Checkpoints (adapter, optimizer moments and RNG state, all safetensors + JSON) are written every
``save_steps`` optimizer steps under ``<adapter>/checkpoints/``; a rerun with the same inputs resumes
from the latest one and produces the same adapter as an uninterrupted run. A finished adapter whose
inputs are unchanged is reused.

With ``early_stopping`` (:mod:`layerif_core.early_stopping`) a part of the training data is held
out, its mean token loss is measured every ``eval_every`` optimizer steps, training stops after
``patience`` evaluations without an improvement (``epochs`` is then the limit), and the adapter of
the best evaluation is the one saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from layerif_core.atomic import atomic_dir, atomic_path
from layerif_core.config import FinetuneSpec, RunConfig, TaskSpec
from layerif_core.data import IGNORE, Batch, TokenizedSplit, tokenize_split
from layerif_core.early_stopping import EarlyStopping, Stopper, holdout_split
from layerif_core.errors import ConfigError, ModelError
from layerif_core.models import fingerprint_model, load_model, max_context

log = logging.getLogger("layerif")

STATE_FILE = "layerif_finetune.json"
StepFn = Callable[[int, float], None]


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced; the adapter is also on disk at ``adapter_dir``."""

    adapter_dir: Path
    model: torch.nn.Module | None  # the peft model (None when a finished adapter was reused)
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    resumed_from: int = 0
    reused: bool = False
    holdout_curve: list[list[float]] = field(default_factory=list)  # early stopping: [[step, loss]]
    best_step: int | None = None  # early stopping: the step whose adapter was saved


def adapter_dir(config: RunConfig) -> Path:
    """Where the adapter goes: ``finetune.output``, else ``model.adapter``, else ``<run>/adapter``."""
    out = config.finetune.output or config.model.adapter
    return Path(out) if out else Path(config.output_dir) / config.name / "adapter"


def lr_at(step: int, total: int, spec: FinetuneSpec) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then linear decay or constant."""
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.learning_rate
    left = max(1, total - spec.warmup_steps)
    return spec.learning_rate * max(0.0, 1 - (step - spec.warmup_steps) / left)


def mean_token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's loss tokens (labels ≠ -100)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
    target = batch.labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def epoch_batches(data: TokenizedSplit, epoch: int, seed: int, batch_size: int, pad_id: int
                  ) -> list[Batch]:
    """The shuffled batches of one epoch; the order depends only on ``(seed, epoch)``."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return list(data.subset(order.tolist()).batches(batch_size, pad_id))


def add_lora(model: torch.nn.Module, spec: FinetuneSpec, source: str, lora: Any = None
             ) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters as ``spec`` says (peft's ``get_peft_model``), or as
    the given ``peft.LoraConfig`` ``lora`` (e.g. one with a per-module ``rank_pattern``)."""
    from peft import LoraConfig, get_peft_model

    if lora is None:
        lora = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=spec.target_modules, task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"finetune.target_modules={spec.target_modules}: {str(exc).splitlines()[0]}; "
                          "name linear modules of the model (e.g. [q_proj, v_proj]).") from None
    peft_model.peft_config["default"].base_model_name_or_path = source
    return peft_model


class _Checkpoints:
    """``<adapter>/checkpoints/step-NNNNNN/``: adapter, optimizer moments, RNG state, ``state.json``."""

    def __init__(self, root: Path, fingerprint: str):
        self.root = root / "checkpoints"
        self.fingerprint = fingerprint

    def latest(self) -> Path | None:
        found = []
        for d in self.root.glob("step-*"):
            state = _read_json(d / "state.json")
            if state and state.get("fingerprint") == self.fingerprint:
                found.append((state["step"], d))
        return max(found)[1] if found else None

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, losses: list[float],
             stopper: Stopper | None = None, best: dict[str, torch.Tensor] | None = None) -> None:
        with atomic_dir(self.root / f"step-{step:06d}") as tmp:
            model.save_pretrained(tmp)
            opt_state = opt.state_dict()
            tensors = {f"state.{i}.{k}": v for i, s in opt_state["state"].items() for k, v in s.items()}
            tensors.update({f"best.{name}": t for name, t in (best or {}).items()})
            tensors["rng.cpu"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(json.dumps({
                "fingerprint": self.fingerprint, "step": step, "losses": losses,
                "param_groups": opt_state["param_groups"],
                "stopper": stopper.to_json() if stopper is not None else None}))
        for old in self.root.glob("step-*"):
            if old.name != f"step-{step:06d}":
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                stopper: Stopper | None = None, best: dict[str, torch.Tensor] | None = None
                ) -> tuple[int, list[float]]:
        """Put the checkpoint at ``path`` back (with early stopping also the stopper's state and the
        best weights into ``stopper`` and ``best``); its step and losses."""
        from peft import set_peft_model_state_dict

        state = json.loads((path / "state.json").read_text())
        set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        tensors = load_file(str(path / "optimizer.safetensors"))
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value
            elif key.startswith("best.") and best is not None:
                best[key[len("best."):]] = value
        if stopper is not None and state.get("stopper"):
            stopper.restore(state["stopper"])
        opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        return int(state["step"]), list(state["losses"])

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _plain(value: Any) -> Any:
    """JSON form of what ``LoraConfig.to_dict`` holds besides plain data (sets sorted: their order
    changes between processes)."""
    return sorted(value) if isinstance(value, set | frozenset) else str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _track(items: list[Batch], description: str, show: bool) -> Iterator[tuple[Batch, Any]]:
    """Iterate ``items`` with a rich progress bar whose description the caller can update."""
    if not show:
        for item in items:
            yield item, None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as progress:
        task = progress.add_task(description, total=len(items))
        for item in items:
            yield item, (progress, task)
            progress.advance(task)


def finetune(config: RunConfig, model: torch.nn.Module | None = None, tokenizer: Any = None,
             show_progress: bool = True, force: bool = False, on_step: StepFn | None = None,
             lora: Any = None, task: TaskSpec | None = None,
             early_stopping: EarlyStopping | None = None) -> FinetuneResult:
    """Train a LoRA adapter on ``config.finetune.data`` (default: the train split of ``task``, or of
    the config's first task).

    ``model``/``tokenizer`` default to ``config.model`` loaded *without* its adapter (the adapter is
    what this makes). ``on_step(step, loss)`` is called after every optimizer step. ``lora`` (a
    ``peft.LoraConfig``) replaces the adapter built from ``config.finetune``'s rank, alpha, dropout
    and target modules; the training options still come from ``config.finetune``.
    ``early_stopping`` stops on a held-out part of the data and saves the best adapter.
    """
    spec = config.finetune
    seed = spec.seed if spec.seed is not None else config.seed
    if model is None:
        model, tokenizer = load_model(config.model.model_copy(update={"adapter": None}))
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ModelError("the model to fine-tune already has LoRA parameters; fine-tune the base model "
                         "(finetune loads model.source without model.adapter).")
    data_spec = spec.data or (task or config.tasks[0]).train
    data = tokenize_split(data_spec, tokenizer, seed, "finetune", max_context(model))
    out = adapter_dir(config)
    key = [spec.model_dump(exclude={"output"}), seed, data.fingerprint,
           fingerprint_model(model, config.model.source)]
    if lora is not None:
        key.append(json.dumps(lora.to_dict(), sort_keys=True, default=_plain))
    if early_stopping is not None:
        key.append(early_stopping.model_dump())
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    done = _read_json(out / STATE_FILE)
    if not force and done and done.get("fingerprint") == fingerprint and (out / "adapter_model.safetensors"
                                                                          ).is_file():
        log.info("reusing the adapter in %s (inputs unchanged; --force retrains)", out)
        return FinetuneResult(out, None, done["steps"], done["losses"], reused=True,
                              holdout_curve=done.get("holdout_curve", []), best_step=done.get("best_step"))
    stopper, holdout, best = None, None, None
    if early_stopping is not None:
        data, holdout = holdout_split(data, early_stopping.holdout, seed)
        stopper, best = Stopper.of(early_stopping), {}

    torch.manual_seed(seed)
    peft_model = add_lora(model, spec, config.model.source, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_batches = math.ceil(len(data) / spec.batch_size)
    per_epoch = math.ceil(n_batches / spec.gradient_accumulation)
    total = spec.epochs * per_epoch
    checkpoints = _Checkpoints(out, fingerprint)
    step, losses, resumed = 0, [], 0
    latest = None if force else checkpoints.latest()
    if latest is not None:
        step, losses = checkpoints.restore(latest, peft_model, opt, stopper, best)
        resumed = step
        log.info("resuming fine-tuning from %s (step %d of %d)", latest, step, total)
    start = time.perf_counter()
    device = next(peft_model.parameters()).device
    trained = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}

    def held_out(at: int) -> None:
        if stopper.update(at, split_loss(peft_model, holdout, spec.batch_size, pad)[0]):
            best.update({n: p.detach().clone() for n, p in trained.items()})

    if stopper is not None and step == 0:
        held_out(0)
    peft_model.train()
    for epoch in range(step // per_epoch, spec.epochs):
        if stopper is not None and stopper.stopped:
            break
        batches = epoch_batches(data, epoch, seed, spec.batch_size, pad)
        skip = (step - epoch * per_epoch) * spec.gradient_accumulation
        groups = [batches[i: i + spec.gradient_accumulation] for i in range(skip, n_batches,
                                                                              spec.gradient_accumulation)]
        desc = f"fine-tuning epoch {epoch + 1}/{spec.epochs}"
        for group, bar in _track(groups, desc, show_progress):
            loss = _optimizer_step(peft_model, opt, params, group, device, lr_at(step, total, spec), spec)
            step += 1
            losses.append(loss)
            if bar is not None:
                bar[0].update(bar[1], description=f"{desc} loss {loss:.4f}")
            if stopper is not None and (step % early_stopping.eval_every == 0 or step == total):
                held_out(step)
            if step % spec.save_steps == 0 and step < total:
                checkpoints.save(peft_model, opt, step, losses, stopper, best)
            if on_step is not None:
                on_step(step, loss)
            if stopper is not None and stopper.stopped:
                break
    peft_model.eval()
    if stopper is not None:
        with torch.no_grad():
            for name, p in trained.items():
                p.copy_(best[name].to(p.device))
    curve = stopper.curve if stopper is not None else []
    best_step = stopper.best_step if stopper is not None else None
    _save_adapter(peft_model, out)
    with atomic_path(out / STATE_FILE) as tmp:
        tmp.write_text(json.dumps({
            "fingerprint": fingerprint, "steps": step, "losses": losses, "base": config.model.source,
            "data": {"source": data_spec.source, "examples": len(data), "fingerprint": data.fingerprint,
                     "held_out": len(holdout) if holdout is not None else 0},
            "seconds": round(time.perf_counter() - start, 2), "resumed_from": resumed,
            "holdout_curve": curve, "best_step": best_step}, indent=2) + "\n")
    checkpoints.clear()
    return FinetuneResult(out, peft_model, step, losses, resumed, holdout_curve=curve, best_step=best_step)


@torch.no_grad()
def split_loss(model: torch.nn.Module, data: TokenizedSplit, batch_size: int, pad: int
                ) -> tuple[float, int]:
    """Mean next-token cross-entropy over all loss tokens of ``data`` (eval mode, no dropout), and
    the number of loss tokens (0: the mean is 0)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.batches(batch_size, pad):
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits[:, :-1].float()
        target = batch.labels[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum"))
        count += int((target != IGNORE).sum())
    model.train(was_training)
    return total / max(count, 1), count


def _optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor],
                    group: list[Batch], device: torch.device, lr: float, spec: FinetuneSpec) -> float:
    """One optimizer step over ``group`` (gradient accumulation): returns the mean batch loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for batch in group:
        loss = mean_token_loss(model, batch.to(device))
        if not torch.isfinite(loss):
            from layerif_core.errors import NumericalError

            raise NumericalError(f"fine-tuning loss is {loss.item()}; lower finetune.learning_rate or "
                                 "use float32 (model.dtype).")
        (loss / len(group)).backward()
        total += loss.item()
    if spec.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
    opt.step()
    return total / len(group)


def _save_adapter(model: torch.nn.Module, out: Path) -> None:
    """Save the adapter in peft's format into ``out``, each file replaced only once written (``out``
    also holds the training checkpoints and the state file, which stay)."""
    with atomic_dir(out, existing="merge") as tmp:
        model.save_pretrained(tmp)
