"""Token-level perplexity over a text, with non-overlapping or strided windows.

The pruning literature's protocol (SparseGPT, Frantar & Alistarh 2023; Wanda, Sun et al. 2024;
OWL; AlphaPruning): join the split's texts with ``"\\n\\n"``, tokenise the whole once, cut it into
windows of ``seqlen`` tokens (the trailing partial window dropped), run each window independently and
report ``exp`` of the mean next-token negative log-likelihood over every predicted token::

    PPL = exp( Σ_w Σ_{t ∈ targets(w)} −log p(x_t | x_{begin(w)..t−1}) / N_tokens )

With ``stride < seqlen`` the windows overlap (the Hugging Face "perplexity of fixed-length models"
recipe): window w starts at ``w·stride`` and scores only the tokens the previous window did not, so
every token is predicted once, with at least ``seqlen − stride`` tokens of context. With
``stride == seqlen`` (the default) the first token of each window has no context and is not scored,
so each full window contributes ``seqlen − 1`` tokens, as in the literature's code.
"""

from __future__ import annotations

import importlib.metadata as md
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerif_core.config import DataSpec
from layerif_core.errors import ConfigError, DataError, NumericalError
from layerif_core.models import max_context
from layerif_eval.options import PerplexityOptions

LITERATURE_SEQLEN = 2048


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` go through the model; tokens ``[first, end)`` are scored."""

    begin: int
    end: int
    first: int


def plan_windows(n_tokens: int, seqlen: int, stride: int, drop_last: bool) -> list[Window]:
    """Windows over ``n_tokens`` tokens; every token from index 1 on is scored at most once."""
    if stride > seqlen:
        raise ConfigError(f"perplexity stride {stride} is larger than seqlen {seqlen}; tokens "
                          "between windows would be skipped. Set stride <= seqlen.")
    out: list[Window] = []
    begin, prev_end = 0, 0
    while begin < n_tokens - 1:
        end = min(begin + seqlen, n_tokens)
        if drop_last and end - begin < seqlen:
            break
        first = max(prev_end, begin + 1)
        if end > first:
            out.append(Window(begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
        begin += stride
    return out


def read_text(opts: PerplexityOptions, seed: int = 0) -> str:
    """The whole text: a ``.txt`` file as it is, a bundled corpus's lines (``limit`` lines after the
    first ``skip``), or a dataset's records (the same selection) joined with ``"\\n\\n"``."""
    from layerif_core.data import bundled_text, load_records

    path = Path(opts.source).expanduser()
    corpus = bundled_text(DataSpec(source=opts.source, split=opts.split, skip=opts.skip, limit=opts.limit))
    if corpus is not None:  # a bundled corpus (bundled:wikitext2) reads as its file does
        text = corpus
    elif path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"text file '{opts.source}' does not exist; check the path.")
        text = path.read_text(encoding="utf-8")
    else:
        spec = DataSpec(source=opts.source, split=opts.split, config_name=opts.config_name,
                        skip=opts.skip, limit=opts.limit)
        records = load_records(spec, seed)
        try:
            text = "\n\n".join(opts.text.format(**r) for r in records)
        except KeyError as exc:
            raise DataError(f"records of '{opts.source}' lack field {exc} used by the perplexity "
                            f"template '{opts.text}'; their fields are {sorted(records[0])}. Set "
                            "the option `text`.") from None
    if not text.strip():
        raise DataError(f"text of '{opts.source}' is empty; perplexity needs some text to score.")
    return text


def default_name(source: str) -> str:
    if source.startswith("bundled:"):
        return source.split(":", 1)[1]
    path = Path(source)
    return path.stem if path.suffix else source.replace("/", "_")


def resolve_seqlen(opts: PerplexityOptions, model: torch.nn.Module) -> int:
    """``opts.seqlen``, or min(model context, 2048); an error when longer than the context."""
    context = max_context(model)
    if opts.seqlen is None:
        return min(context or LITERATURE_SEQLEN, LITERATURE_SEQLEN)
    if context is not None and opts.seqlen > context:
        raise ConfigError(f"perplexity seqlen {opts.seqlen} exceeds the model's context of {context} "
                          f"tokens; set seqlen <= {context}.")
    return opts.seqlen


@torch.no_grad()
def window_nll(model: torch.nn.Module, ids: torch.Tensor, windows: list[Window], device: torch.device
               ) -> tuple[float, int]:
    """Summed next-token NLL (float64) and the number of scored tokens over equal-length ``windows``."""
    # x: [B, W] token ids; logits: [B, W-1, V] predicting x[:, 1:]
    x = torch.stack([ids[w.begin:w.end] for w in windows]).to(device)
    logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
    # -log softmax at the target, as logsumexp - logit: accurate in fp32 over a large vocabulary
    # (F.cross_entropy on [B, V, T]-shaped input is off by ~1e-4 nats on CPU)
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(2, x[:, 1:, None])[..., 0]  # [B, W-1]
    pos = torch.arange(1, x.shape[1], device=device)  # position of each target inside its window
    starts = torch.tensor([w.first - w.begin for w in windows], device=device)
    scored = pos[None, :] >= starts[:, None]
    return float(nll.double()[scored].sum()), int(scored.sum())


class Perplexity:
    """Token-level perplexity of a model over a text (see the module docstring for the protocol)."""

    def __init__(self, opts: PerplexityOptions):
        self.opts = opts
        self.report: dict[str, Any] = {}

    def estimate(self, work):
        """What the evaluation will cost (``layerif study --plan``; :mod:`layerif_eval.cost`)."""
        from layerif_eval.cost import perplexity

        return perplexity(self.opts, work)

    def evaluate(self, ctx: Any, model: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        opts = self.opts
        seqlen = resolve_seqlen(opts, model)
        stride = opts.stride or seqlen
        text = read_text(opts, seed=getattr(ctx, "seed", 0))
        # verbose=False: a whole text is longer than the model's context by design (it is windowed)
        ids = torch.tensor(tokenizer(text, add_special_tokens=opts.add_special_tokens,
                                     verbose=False)["input_ids"])
        windows = plan_windows(len(ids), seqlen, stride, opts.drop_last)
        if not windows:
            raise DataError(f"text of '{opts.source}' has {len(ids)} tokens, less than one window of "
                            f"{seqlen}; lower seqlen or set drop_last=false.")
        windows = windows[: opts.max_windows]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        groups = _batches(windows, opts.batch_size)
        track = getattr(ctx, "track", None)
        items = track(groups, len(groups), "perplexity") if track else groups
        try:
            for group in items:
                nll, n = window_nll(model, ids, group, device)
                total, count = total + nll, count + n
        finally:
            model.train(was_training)
        mean = total / count
        if not math.isfinite(mean):
            raise NumericalError(f"perplexity over '{opts.source}': the mean token loss is {mean}; "
                                 "evaluate in float32 (model.dtype=float32).")
        name = opts.name or default_name(opts.source)
        key = f"perplexity/{name}"
        metrics = {key: math.exp(mean), f"{key}/nll": mean, f"{key}/tokens": float(count),
                   f"{key}/windows": float(len(windows))}
        self.report = {
            "evaluator": "perplexity", "provider": "layerif-eval", "version": _version(),
            "options": opts.model_dump(), "seqlen": seqlen, "stride": stride,
            "text_tokens": len(ids), "tokens_scored": count, "windows": len(windows),
            "protocol": "exp(mean next-token NLL); texts joined with '\\n\\n'; windows of seqlen",
        }
        record_provenance(ctx, key, self.report)
        return metrics


def record_provenance(ctx: Any, key: str, report: dict[str, Any]) -> None:
    """Keep an evaluator's provenance in the run's manifest (also when run by ``layerif run``)."""
    run_dir = getattr(ctx, "run_dir", None)
    if run_dir is not None:
        run_dir.manifest.setdefault("evaluation", {})[key] = report
        run_dir.save_manifest()


def _batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive windows of equal length, at most ``batch_size`` per group."""
    out: list[list[Window]] = []
    for w in windows:
        last = out[-1] if out else None
        if last and len(last) < batch_size and last[0].end - last[0].begin == w.end - w.begin:
            last.append(w)
        else:
            out.append([w])
    return out


def _version() -> str:
    try:
        return md.version("layerif-eval")
    except md.PackageNotFoundError:
        return "unknown"
