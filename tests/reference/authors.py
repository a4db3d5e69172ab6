"""A deliberately plain restatement of LayerIF as its authors compute it (arXiv 2505.23811), written
from the project's digest PAPER.md §1 and §3(b), which reads HadiAskari/Expert_Allocation
(``LayerIF_Computation/compute_IF.py``, ``influence.py``, ``expert_allocator.ipynb``) and
HadiAskari/LayerIF_Pruning_New (AlphaPruning's ``lib/prune.py::ww_sparsity``).

Nothing here imports layerif: every quantity is recomputed with loops over examples (batch size 1),
``torch.autograd.grad`` on the model's own parameters, and dicts of gradients keyed by parameter
name, so that it is an independent check of layerif's estimator, aggregators and allocators.

Sign: this module keeps the authors' sign, ``IF = −I`` (Koh & Liang): a **negative** IF is helpful.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

MAX_LENGTH = 128  # create_tokenized_datasets: truncation=True, max_length=128
BLOCK_INDEX = re.compile(r"\.(\d+)\.")  # the authors' extract_layer_number: first ".<int>." of a name
LAMBDA_SCALE = 10.0  # λ_w = mean_i(mean(g_i²)) / 10


def attention_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter whose name contains ``self_attn`` and a block index, in model order (PAPER §1
    "What is scored": the full q, k, v, o weights of each block's self-attention; embeddings, MLPs
    and norms are not scored)."""
    return {name: p for name, p in model.named_parameters()
            if "self_attn" in name and BLOCK_INDEX.search(name)}


def block_of(name: str) -> int:
    """The transformer block a parameter belongs to: the first ``.<digits>.`` in its name."""
    return int(BLOCK_INDEX.search(name).group(1))


@contextmanager
def grads_enabled(params: dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` on ``params`` for the duration, restored afterwards (the model may be a
    session fixture shared with other tests)."""
    before = {name: p.requires_grad for name, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for name, p in params.items():
            p.requires_grad_(before[name])


def pad_split(examples: list[list[int]], eos_id: int) -> list[tuple[list[int], list[int]]]:
    """The authors' tokenisation of one split (PAPER §1 "Loss"; ``create_tokenized_datasets``:
    ``padding=True, truncation=True, max_length=128``, pad token = EOS, right side; their map batches
    of 1000 hold a whole 300 or 50 example split): each example cut to 128 tokens, then every
    example right-padded with EOS to the longest; returns ``(input_ids, attention_mask)`` per
    example, the mask 1 on the example's own tokens and 0 on its pads."""
    cut = [ids[:MAX_LENGTH] for ids in examples]
    width = max(len(ids) for ids in cut)
    return [(ids + [eos_id] * (width - len(ids)), [1] * len(ids) + [0] * (width - len(ids)))
            for ids in cut]


def hf_mean_loss(model: torch.nn.Module, ids: list[int], mask: list[int] | None = None
                 ) -> torch.Tensor:
    """One example's loss as the authors compute it (PAPER §1 "Loss"): ``labels = input_ids``, the
    Hugging Face causal-LM loss, i.e. the mean cross-entropy over every predicted token of the
    example (prompt and answer alike). ``mask``: the attention mask of a padded example; the labels
    are still all of ``input_ids``, so the pads (EOS) are in the mean."""
    x = torch.tensor([ids], dtype=torch.long)
    m = torch.ones_like(x) if mask is None else torch.tensor([mask], dtype=torch.long)
    return model(input_ids=x, attention_mask=m, labels=x).loss


def example_gradients(model: torch.nn.Module, examples: list[list[int]],
                      masks: list[list[int]] | None = None, dtype: torch.dtype | None = torch.float64
                      ) -> list[dict[str, torch.Tensor]]:
    """Per-example gradients of the scored parameters, one backward per example (batch size 1);
    each a dict ``name → gradient`` (the parameter's shape; cast to ``dtype``, or, ``None``, kept
    in the model's dtype: bfloat16 for the authors' bfloat16 model, as their ``v.grad``).
    ``masks``: the attention masks of padded examples (:func:`pad_split`)."""
    params = attention_parameters(model)
    out = []
    with grads_enabled(params):
        for k, ids in enumerate(examples):
            loss = hf_mean_loss(model, ids, None if masks is None else masks[k])
            grads = torch.autograd.grad(loss, list(params.values()))
            out.append({name: g.detach() if dtype is None else g.detach().to(dtype)
                        for name, g in zip(params, grads, strict=True)})
    return out


def datainf_if_tables(train: list[dict[str, torch.Tensor]], val: list[dict[str, torch.Tensor]]
                      ) -> dict[int, torch.Tensor]:
    """The authors' DataInf influence table of every block, ``IF[v, i]`` ``[n_val, n_train]``.

    For each weight tensor w (PAPER §1 "DataInf"):

        λ_w    = mean_i( mean(g_i,w²) ) / 10                                 (over training examples)
        hvp_v,w = (1/(n λ_w)) Σ_i ( g_v,w − (g_v,w · g_i,w) / (λ_w + ‖g_i,w‖²) · g_i,w )   per v
        IF[v, i] = − Σ_{w in the block} hvp_v,w · g_i,w
    """
    n = len(train)
    tables: dict[int, torch.Tensor] = {}
    for w in train[0]:
        lam = sum(float(torch.mean(g[w] ** 2)) for g in train) / n / LAMBDA_SCALE
        squared_norms = [float(torch.sum(gi[w] ** 2)) for gi in train]
        table = tables.setdefault(block_of(w), torch.zeros(len(val), n, dtype=torch.float64))
        for v, gv in enumerate(val):
            hvp = torch.zeros_like(gv[w])
            for gi, norm2 in zip(train, squared_norms, strict=True):
                c = torch.sum(gv[w] * gi[w]) / (lam + norm2)
                hvp += (gv[w] - c * gi[w]) / (n * lam)
            for i, gi in enumerate(train):
                table[v, i] -= torch.sum(hvp * gi[w])
    return dict(sorted(tables.items()))


def datainf_if_tables_in_their_dtypes(train: list[dict[str, torch.Tensor]],
                                      val: list[dict[str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """:func:`datainf_if_tables` with the tensor operations and dtypes of the authors' code
    (``influence.py``, ``IFEngineGeneration.compute_hvp_proposed`` and ``compute_IF``), for their
    bfloat16 gradients: ``S = torch.zeros(n)`` (float32) holds ``torch.mean(g**2)`` (bf16), λ =
    ``torch.mean(S) / 10`` (float32); ``C = torch.sum(g_v * g_i) / (λ + torch.sum(g_i**2))``
    (bf16 sums, a float32 quotient); ``hvp = torch.zeros(...)`` (float32) ``+= (g_v − C·g_i) /
    (n·λ)`` (the term in bf16: a 0-dim float32 tensor does not promote a bf16 vector); ``IF −=
    torch.sum(hvp * g_i)`` (float32). Returns float64 tables, ``IF[v, i]``."""
    n = len(train)
    tables: dict[int, torch.Tensor] = {}
    for w in train[0]:
        squares = torch.zeros(n)
        for i, gi in enumerate(train):
            squares[i] = torch.mean(gi[w] ** 2)
        lam = torch.mean(squares) / LAMBDA_SCALE
        table = tables.setdefault(block_of(w), torch.zeros(len(val), n, dtype=torch.float64))
        for v, gv in enumerate(val):
            hvp = torch.zeros(gv[w].shape)
            for gi in train:
                c = torch.sum(gv[w] * gi[w]) / (lam + torch.sum(gi[w] ** 2))
                hvp += (gv[w] - c * gi[w]) / (n * lam)
            for i, gi in enumerate(train):
                table[v, i] -= float(torch.sum(hvp * gi[w]))
    return dict(sorted(tables.items()))


def per_example_influence(table: torch.Tensor) -> list[float]:
    """One value per training example: the IF table summed over the validation examples."""
    return [float(sum(table[v, i] for v in range(table.shape[0]))) for i in range(table.shape[1])]


def positive_cell(table: torch.Tensor) -> float:
    """The notebook's "Only positive IF Values" cell (the paper's "+VE"): sum over validation,
    delete the entries > 0, sum the rest (the total helpful influence, a negative number)."""
    return sum(x for x in per_example_influence(table) if not x > 0)


def top_cell(table: torch.Tensor, fraction: float = 0.25) -> float:
    """"TOP-25%": the sum of the ⌈fraction·N⌉ most negative (most helpful) per-example values."""
    values = sorted(per_example_influence(table))
    return sum(values[: math.ceil(fraction * len(values))])


def all_cell(table: torch.Tensor) -> float:
    """"ALL": the sum of every per-example value."""
    return sum(per_example_influence(table))


def harmful_cell(table: torch.Tensor) -> float:
    """The reverse experiment (not the paper's score): the sum of the entries > 0."""
    return sum(x for x in per_example_influence(table) if x > 0)


def scale_values_final(values: list[float], total: int, beta: float, higher_index_first: bool = True
                       ) -> list[int]:
    """Experts per layer from the authors' layer values (their sign), PAPER §1 "Scores → experts":
    x = max(values) − values, x^β, fractions of (T − n), floor, +1 each, then the experts left one
    each to the largest fractional parts; equal fractional parts go to the higher layer index first
    (``higher_index_first=False`` gives the other rule, to show that the rule matters)."""
    n = len(values)
    top = max(values)
    powered = [(top - v) ** beta for v in values]
    fractions = [p / sum(powered) * (total - n) for p in powered]
    experts = [math.floor(f) + 1 for f in fractions]
    remainder = total - sum(experts)
    parts = [f - math.floor(f) for f in fractions]
    order = sorted(range(n), key=lambda i: (-parts[i], -i if higher_index_first else i))
    for i in order[:remainder]:
        experts[i] += 1
    return experts


def minmax(values: list[float]) -> list[float]:
    """``(v − min) / (max − min)``."""
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) for v in values]


def savgol(values: list[float], window: int = 7, order: int = 3) -> list[float]:
    """Savitzky–Golay smoothing written out as least squares: each point is the value at its own
    position of the degree-``order`` polynomial fitted to the ``window`` points centred on it; the
    first and last ``window // 2`` points take the polynomial fitted to the first (last) ``window``
    points (scipy's default ``mode='interp'``)."""
    y = np.asarray(values, dtype=np.float64)
    half = window // 2
    out = np.empty_like(y)
    for k in range(len(y)):
        start = min(max(k - half, 0), len(y) - window)
        xs = np.arange(start, start + window)
        coeffs = np.polyfit(xs - k, y[start:start + window], order)
        out[k] = coeffs[-1]  # the fitted polynomial at x = k
    return out.tolist()


def ww_sparsity(scores: list[float], params: list[float], sparsity: float, epsilon: float
                ) -> list[float]:
    """AlphaPruning's map (PAPER §3(b)): r_l = (s_l − min)/(max − min)·2ε + (1 − ε), scaled by
    c = S·Σ P_l / Σ P_l r_l, each ratio above 0.99 clipped to 0.99 (no re-balancing)."""
    r = [x * 2 * epsilon + (1 - epsilon) for x in minmax(scores)]
    c = sparsity * sum(params) / sum(p * ri for p, ri in zip(params, r, strict=True))
    return [min(c * ri, 0.99) for ri in r]
