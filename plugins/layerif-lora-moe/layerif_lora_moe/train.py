"""A compact training loop for LoRA-MoE: AdamW, gradient accumulation, fp32 or bf16 autocast,
checkpoints that resume bit-for-bit, a progress bar, seed control.

Loss of a micro-batch: mean token cross-entropy (answer tokens, per the DataSpec) plus
``aux_loss_weight ·`` the Switch load-balancing loss summed over routed modules, divided by the
accumulation count. The data order is a seeded permutation per epoch and dropout is reseeded from
``(seed, step)`` at every step, so a run resumed from a checkpoint equals an uninterrupted one.

With ``early_stopping`` (:mod:`layerif_core.early_stopping`) a part of the training split is held
out; its loss is measured every ``eval_every`` steps, training stops after ``patience`` evaluations
without an improvement, and the experts and routers of the best evaluation are put back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from layerif_core.context import RunContext
from layerif_core.data import IGNORE, Batch, TokenizedSplit
from layerif_core.early_stopping import Stopper, holdout_split
from layerif_core.errors import NumericalError
from layerif_lora_moe.config import LoraMoeOptions
from layerif_lora_moe.layer import token_mask
from layerif_lora_moe.model import LoraMoeModel

CHECKPOINT = "lora_moe/checkpoint.safetensors"


@dataclass
class TrainLog:
    """What the loop records: one row per step, validation losses, expert usage per layer."""

    steps: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)  # {"step": s, "layers": {l: [frac]}}
    resumed_from: int | None = None
    seconds: float = 0.0
    holdout: list[dict[str, float]] = field(default_factory=list)  # early stopping's held-out loss
    best_step: int | None = None  # early stopping: the step whose weights were put back
    final_validation: float | None = None  # early stopping: validation loss of the weights put back

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "validation": self.validation, "usage": self.usage,
                "resumed_from": self.resumed_from, "seconds": round(self.seconds, 3),
                "holdout": self.holdout, "best_step": self.best_step,
                "final_validation": self.final_validation}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainLog:
        usage = [{"step": u["step"], "layers": {int(k): v for k, v in u["layers"].items()}}
                 for u in data.get("usage", [])]
        return cls(data.get("steps", []), data.get("validation", []), usage, data.get("resumed_from"),
                   float(data.get("seconds", 0.0)), data.get("holdout", []), data.get("best_step"),
                   data.get("final_validation"))


def token_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the loss tokens of ``batch`` and their number.

    The language-model head runs only at the positions where some row of the batch has a label
    (``logits_to_keep``, which Hugging Face causal LMs accept): with the loss on short answers that
    is a few positions instead of every one, a fifth of a small model's training FLOPs.
    """
    # logits: [B, K, V] at the kept positions t, each predicting t+1
    target = batch.labels[:, 1:]
    keep = (target != IGNORE).any(dim=0).nonzero().squeeze(1)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError as error:  # a model without logits_to_keep; any other TypeError is raised
        if "logits_to_keep" not in str(error):
            raise
        logits = model(**inputs).logits
    if logits.shape[1] != keep.numel():  # every position was computed
        logits = logits[:, keep]
    logits, target = logits.float(), target[:, keep]
    n = int((target != IGNORE).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss / max(n, 1), n


@torch.no_grad()
def validation_loss(ctx: RunContext, model: torch.nn.Module, split: TokenizedSplit, batch_size: int,
                    precision: str = "fp32") -> float:
    """Mean token cross-entropy of ``split`` (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in split.batches(batch_size, ctx.pad_id):
        batch = batch.to(ctx.device)
        with _autocast(ctx.device, precision), token_mask(batch.attention_mask):
            loss, n = token_loss(model, batch)
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_batches(split: TokenizedSplit, batch_size: int, seed: int, pad_id: int) -> Iterator[Batch]:
    """Endless micro-batches: a fresh seeded permutation of ``split`` per epoch."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(split), generator=g).tolist()
        yield from split.subset(order).batches(batch_size, pad_id)
        epoch += 1


def total_steps(opts: LoraMoeOptions, n_examples: int, batch_size: int) -> int:
    if opts.max_steps is not None:
        return opts.max_steps
    per_epoch = math.ceil(math.ceil(n_examples / batch_size) / opts.grad_accum)
    return max(1, math.ceil(opts.epochs * per_epoch))


def lr_at(step: int, steps: int, opts: LoraMoeOptions) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``0.1 · lr``."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    span = max(1, steps - opts.warmup_steps)
    t = (step - opts.warmup_steps) / span
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _fingerprint(handle: LoraMoeModel, opts: LoraMoeOptions, data_fp: str, model_fp: str) -> str:
    blob = json.dumps([handle.spec.__dict__, opts.model_dump(mode="json"), data_fp, model_fp],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(ctx: RunContext, handle: LoraMoeModel, opt: torch.optim.Optimizer, step: int,
                     fp: str, log: TrainLog, stopper: Stopper | None = None,
                     best: dict[str, torch.Tensor] | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {f"best/{name}": t for name, t in (best or {}).items()}
    params = handle.trainable()
    for name, p in params.items():
        tensors[f"param/{name}"] = p.detach()
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}/{name}"] = state[key]
        if "step" in state:
            tensors[f"step/{name}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)
    meta = {"fingerprint": fp, "step": str(step), "log": json.dumps(log.to_json())}
    if stopper is not None:
        meta["stopper"] = json.dumps(stopper.to_json())
    ctx.run_dir.write_tensors(CHECKPOINT, tensors, meta)


def _load_checkpoint(ctx: RunContext, handle: LoraMoeModel, opt: torch.optim.Optimizer, fp: str,
                     stopper: Stopper | None = None, best: dict[str, torch.Tensor] | None = None
                     ) -> tuple[int, TrainLog] | None:
    """Put a matching checkpoint's weights and optimizer state back (and, with early stopping, the
    stopper's state into ``stopper`` and the best weights into ``best``); its step and log."""
    if ctx.run_dir.force:
        return None
    found = ctx.run_dir.read_tensors(CHECKPOINT)
    if found is None or found[1].get("fingerprint") != fp:
        return None
    tensors, meta = found
    params = handle.trainable()
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param/{name}"].to(p.device))
            if f"exp_avg/{name}" in tensors:
                opt.state[p] = {
                    "step": tensors[f"step/{name}"].reshape(()).clone(),
                    "exp_avg": tensors[f"exp_avg/{name}"].to(p.device).clone(),
                    "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(p.device).clone(),
                }
    if stopper is not None and best is not None:
        stopper.restore(json.loads(meta["stopper"]))
        best.update({name: tensors[f"best/{name}"].to(p.device).clone() for name, p in params.items()})
    log = TrainLog.from_json(json.loads(meta["log"]))
    return int(meta["step"]), log


@contextlib.contextmanager
def _not_counted(handle: LoraMoeModel) -> Iterator[None]:
    """Evaluation passes during training leave the expert usage of the training steps alone."""
    handle.record_usage(False)
    try:
        yield
    finally:
        handle.record_usage(True)


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


def _held_out(ctx: RunContext, model: torch.nn.Module, holdout: TokenizedSplit, stopper: Stopper,
              best: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], step: int,
              batch_size: int, opts: LoraMoeOptions, log: TrainLog) -> None:
    """Measure the held-out loss after ``step`` steps; keep the weights when it is the best."""
    loss = validation_loss(ctx, model, holdout, batch_size, opts.precision)
    log.holdout.append({"step": step, "loss": loss})
    if stopper.update(step, loss):
        best.update(_snapshot(params))


def train(ctx: RunContext, handle: LoraMoeModel, opts: LoraMoeOptions, train_split: TokenizedSplit,
          val_split: TokenizedSplit | None, stop_after: int | None = None) -> TrainLog:
    """Train the experts and routers of ``handle`` in place; resume from a matching checkpoint.

    ``stop_after`` ends the loop after that many steps (with a checkpoint), as an interruption would.
    """
    model = handle.model
    seed = ctx.seed if opts.seed is None else opts.seed
    batch_size = opts.batch_size or ctx.batch_size
    fp = _fingerprint(handle, opts, train_split.fingerprint + (val_split.fingerprint if val_split else ""),
                      ctx.model_fingerprint)
    es = opts.early_stopping
    stopper, holdout, best = (Stopper.of(es), None, {}) if es is not None else (None, None, None)
    if es is not None:
        train_split, holdout = holdout_split(train_split, es.holdout, seed)
    steps = total_steps(opts, len(train_split), batch_size)
    named = handle.trainable()
    params = list(named.values())
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    start, log = 0, TrainLog()
    resumed = _load_checkpoint(ctx, handle, opt, fp, stopper, best)
    if resumed is not None:
        start, log = resumed
        log.resumed_from = start
        ctx.log.info("resuming LoRA-MoE training at step %d of %d", start, steps)
    if start == 0 and val_split is not None:
        log.validation.append({"step": 0, "loss": validation_loss(ctx, model, val_split, batch_size,
                                                                  opts.precision)})
    if start == 0 and holdout is not None:
        _held_out(ctx, model, holdout, stopper, best, named, 0, batch_size, opts, log)
    batches = micro_batches(train_split, batch_size, seed, ctx.pad_id)
    for _ in range(start * opts.grad_accum):
        next(batches)
    model.train()
    handle.record_usage(True)
    began = time.perf_counter()
    end = steps if stop_after is None else min(steps, start + stop_after)
    if stopper is not None and stopper.stopped:  # a finished run's checkpoint
        end = start
    for step in ctx.track(range(start, end), end - start, "LoRA-MoE training"):
        torch.manual_seed(seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, opts)
        task_sum, aux_sum = 0.0, 0.0
        for _ in range(opts.grad_accum):
            batch = next(batches).to(ctx.device)
            with _autocast(ctx.device, opts.precision), token_mask(batch.attention_mask):
                loss, _ = token_loss(model, batch)
                aux = handle.aux_loss()
            if not torch.isfinite(loss):
                raise NumericalError(f"LoRA-MoE training loss is {float(loss)} at step {step}; lower lr "
                                     "or use precision fp32.")
            ((loss + opts.aux_loss_weight * aux) / opts.grad_accum).backward()
            task_sum += float(loss.detach()) / opts.grad_accum
            aux_sum += float(aux.detach()) / opts.grad_accum
        if opts.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.steps.append({"step": step + 1, "loss": task_sum, "aux": aux_sum,
                          "lr": opt.param_groups[0]["lr"]})
        log.usage.append({"step": step + 1, "layers": handle.take_usage()})
        done = step + 1
        if holdout is not None and (done % es.eval_every == 0 or done == steps):
            with _not_counted(handle):
                _held_out(ctx, model, holdout, stopper, best, named, done, batch_size, opts, log)
        stop = stopper is not None and stopper.stopped
        if val_split is not None and opts.eval_every and done % opts.eval_every == 0 and done < steps \
                and not stop:
            with _not_counted(handle):
                log.validation.append({"step": done, "loss": validation_loss(
                    ctx, model, val_split, batch_size, opts.precision)})
        if (opts.save_every and done % opts.save_every == 0) or done == end or stop:
            log.seconds += time.perf_counter() - began
            began = time.perf_counter()
            if (done == steps or stop) and val_split is not None:
                log.validation.append({"step": done, "loss": validation_loss(
                    ctx, model, val_split, batch_size, opts.precision)})
            _save_checkpoint(ctx, handle, opt, done, fp, log, stopper, best)
        if stop:
            break
    handle.record_usage(False)
    if stopper is not None and (stopper.stopped or end == steps):
        _restore_best(ctx, model, named, best, stopper, val_split, batch_size, opts, log)
    model.eval()
    return log


def _restore_best(ctx: RunContext, model: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                  best: dict[str, torch.Tensor], stopper: Stopper, val_split: TokenizedSplit | None,
                  batch_size: int, opts: LoraMoeOptions, log: TrainLog) -> None:
    """Put the weights of the best held-out evaluation back and measure their validation loss."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(best[name])
    log.best_step = stopper.best_step
    if val_split is not None:
        log.final_validation = validation_loss(ctx, model, val_split, batch_size, opts.precision)
