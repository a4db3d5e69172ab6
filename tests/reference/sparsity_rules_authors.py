"""A deliberately plain restatement of four layer-wise sparsity rules as their authors' code computes
them. It imports nothing from layerif: one unpadded example per forward (or backward), hooks on every
``nn.Linear`` of a block, dicts by module name, the maps written out step by step.

- DLP: ironartisan/DLP ``lib/prune.py`` (``get_dlp_ratios``; ``--strategy median`` of
  ``get_dlp_structure_ratios``), ``lib/layerwrapper.py`` (``WrappedGPT.add_batch``).
- LSA: BeiYazi0/LSA ``layersp/blk.py`` (``BlockWanda.add_batch``, ``blk_s``, ``blk_score``). The greedy
  choice is restated row by row from its definition (the cost of a channel recomputed from the set
  removed so far), not with the source's incremental updates.
- ALP: ironartisan/ALP ``save_gradient.py``, ``lib/layer.py`` (``update_layer``), ``lib/data.py``
  (labels: the last token only), ``lib/prune_all.py`` (``get_per_layer_ratio``).
- ATP: wzhuang-xmu/ATP ``main.py`` (the progression and its "Illegal beta" bound), ``search.sh`` (the
  grid of β).
"""

from __future__ import annotations

from decimal import Decimal

import torch
from torch import nn


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def find_layers(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def scaler_rows(model: nn.Module, examples: list[list[int]]) -> dict[tuple[int, str], torch.Tensor]:
    """WrappedGPT's running ``scaler_row``: per example, ``row *= n/(n+1); n += 1; row += ‖x‖²/n``."""
    rows, counts, handles = {}, {}, []
    for i, block in enumerate(blocks(model)):
        for name, lin in find_layers(block).items():
            key = (i, name)
            rows[key] = torch.zeros(lin.in_features, dtype=torch.float64)
            counts[key] = 0

            def hook(_m, inp, _out, key=key):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().double()
                rows[key] *= counts[key] / (counts[key] + 1)
                counts[key] += 1
                rows[key] += torch.norm(x, p=2, dim=1) ** 2 / counts[key]
            handles.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        for ids in examples:
            model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return rows


def importance_map(stat: list[float], sparsity: float, alpha: float) -> list[float]:
    """DLP's ratios (``ratio_conn`` to ``all_layer_ratio``), returned as sparsities ``1 − ratio``."""
    total = sum(stat)
    imp = torch.tensor([1 - x / total for x in stat], dtype=torch.float64)
    scaled = (imp - imp.min()) * (1 / (imp.max() - imp.min()) * alpha * 2)
    keep = scaled - scaled.mean() + (1 - sparsity)
    return [1 - float(k) for k in keep]


def dlp_statistic(model: nn.Module, examples: list[list[int]], strategy: str = "median") -> list[float]:
    rows = scaler_rows(model, examples)
    out = []
    for i, block in enumerate(blocks(model)):
        metric = torch.cat([(lin.weight.data.double().abs() * torch.sqrt(rows[(i, name)])[None, :]).flatten()
                            for name, lin in find_layers(block).items()])
        value = torch.median(metric.float()) if strategy == "median" else torch.mean(metric)
        out.append(abs(float(value)))
    return out


def dlp_sparsities(model, examples, sparsity: float, alpha: float, strategy: str = "median") -> list[float]:
    return importance_map(dlp_statistic(model, examples, strategy), sparsity, alpha)


def lsa_hessians(model: nn.Module, examples: list[list[int]]) -> dict[tuple[int, str], torch.Tensor]:
    """BlockWanda's ``H``: per example, ``H *= n/(n+1); n += 1; H += (√(2/n) x)(√(2/n) x)ᵀ``."""
    hs, counts, handles = {}, {}, []
    for i, block in enumerate(blocks(model)):
        for name, lin in find_layers(block).items():
            key = (i, name)
            hs[key] = torch.zeros(lin.in_features, lin.in_features, dtype=torch.float64)
            counts[key] = 0

            def hook(_m, inp, _out, key=key):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().double()
                hs[key] *= counts[key] / (counts[key] + 1)
                counts[key] += 1
                x = (2 / counts[key]) ** 0.5 * x
                hs[key] += x @ x.t()
            handles.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        for ids in examples:
            model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return hs


def greedy_row_error(w: list[float], h: torch.Tensor, block_size: int, fraction: float) -> float:
    """One row: in each group of ``block_size`` channels remove ``int(block_size·fraction)`` times
    the channel j of least cost ``w_j² H_jj + 2 w_j Σ_{k removed} w_k H_kj`` (first on ties)."""
    n = len(w)
    size = block_size or n
    removed: list[int] = []
    total = 0.0
    for start in range(0, n, size):
        group = list(range(start, min(start + size, n)))
        for _ in range(int(size * fraction)):
            best, best_cost = None, None
            for j in group:
                if j in removed:
                    continue
                cost = w[j] * w[j] * float(h[j, j]) + 2 * w[j] * sum(w[k] * float(h[k, j]) for k in removed)
                if best_cost is None or cost < best_cost:
                    best, best_cost = j, cost
            removed.append(best)
            total += best_cost
    return total


def lsa_statistic(model, examples, block_size: int, fraction: float = 0.5) -> list[float]:
    hs = lsa_hessians(model, examples)
    out = []
    for i, block in enumerate(blocks(model)):
        errors = []
        for name, lin in find_layers(block).items():
            weight = lin.weight.data.double()
            errors.append(sum(greedy_row_error(row.tolist(), hs[(i, name)], block_size, fraction)
                              for row in weight))
        out.append(abs(sum(errors) / len(errors)))
    return out


def lsa_sparsities(model, examples, sparsity: float, alpha: float, block_size: int) -> list[float]:
    return importance_map(lsa_statistic(model, examples, block_size), sparsity, alpha)


def alp_statistic(model: nn.Module, examples: list[list[int]]) -> list[float]:
    """``conn_l2 += g²; conn_l2_hundred = conn_l2 + (100 g)²`` per example (labels: last token only),
    then per block ``Σ |z|`` of ``conn_l2_hundred``."""
    conn_l2: dict[tuple[int, str], torch.Tensor] = {}
    hundred: dict[tuple[int, str], torch.Tensor] = {}
    for ids in examples:
        model.zero_grad()
        inp = torch.tensor([ids])
        tar = inp.clone()
        tar[:, :-1] = -100
        model(input_ids=inp, labels=tar).loss.backward()
        for i, block in enumerate(blocks(model)):
            for name, lin in find_layers(block).items():
                grad = lin.weight.grad.detach().double()
                key = (i, name)
                conn_l2[key] = conn_l2.get(key, torch.zeros_like(grad)) + grad ** 2
                hundred[key] = conn_l2[key] + (grad * 100) ** 2
    model.zero_grad()
    out = []
    for i, block in enumerate(blocks(model)):
        metric = torch.cat([hundred[(i, name)].flatten() for name in find_layers(block)])
        z = (metric - torch.mean(metric)) / torch.std(metric)
        out.append(float(torch.sum(torch.abs(z))))
    return out


def alp_sparsities(model, examples, sparsity: float, alpha: float) -> list[float]:
    return importance_map(alp_statistic(model, examples), sparsity, alpha)


def atp_sparsities(n_layers: int, sparsity: float, beta: float) -> list[float]:
    """``first = S − β(L−1)/2``, ``[first + i β]``; raises where ``main.py`` prints "Illegal beta"."""
    if beta > min(2 * sparsity / (n_layers - 1), 2 * (1 - sparsity) / (n_layers - 1)):
        raise ValueError("Illegal beta")
    first = sparsity - (beta * (n_layers - 1)) / 2
    return [first + i * beta for i in range(n_layers)]


def atp_search_grid(n_layers: int, sparsity: float) -> list[float]:
    """``search.sh``: β = 0.002, then + 0.002 (decimal arithmetic, as ``bc``) until "Illegal beta"."""
    grid, beta = [], Decimal("0.002")
    while True:
        try:
            atp_sparsities(n_layers, sparsity, float(beta))
        except ValueError:
            return grid
        grid.append(float(beta))
        beta += Decimal("0.002")
