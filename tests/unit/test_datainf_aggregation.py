"""DataInf on a hand-built case against the LayerIF authors' formulas, and the paper's score variants
(helpful_sum "+VE", top_helpful "TOP-25%", net_sum "ALL", and the reverse harmful_sum / top_harmful)
against hand-computed vectors.

The reference below restates, with plain loops over dicts, what HadiAskari/Expert_Allocation
``LayerIF_Computation/influence.py`` (``IFEngineGeneration``) computes: a λ per weight tensor from the
training gradients, one DataInf inverse-Hessian-vector product per validation example, and the paper-
sign influence ``IF[tr][val] = −Σ_w Σ hvp_val,w ∘ g_tr,w``; the notebook then sums over validation
examples (``np.sum(..., axis=0)``) before any clipping.
"""

from __future__ import annotations

import torch

from layerif_core.estimators.datainf import datainf_influence, default_lambda
from layerif_core.registry import get_registry

SHAPES = {"q_proj.lora_A": (2, 6), "q_proj.lora_B": (5, 2)}


def authors_influence(tr: dict[int, dict[str, torch.Tensor]], val: dict[int, dict[str, torch.Tensor]]
                      ) -> torch.Tensor:
    """Paper-sign influence of each training example summed over the validation examples."""
    n_train = len(tr)
    out = torch.zeros(n_train, dtype=torch.float64)
    for v_id in val:
        hvp = {}
        for w in val[v_id]:
            s = torch.zeros(n_train, dtype=torch.float64)
            for t_id in tr:
                s[t_id] = torch.mean(tr[t_id][w] ** 2)
            lam = torch.mean(s) / 10
            h = torch.zeros_like(val[v_id][w])
            for t_id in tr:
                g = tr[t_id][w]
                c = torch.sum(val[v_id][w] * g) / (lam + torch.sum(g**2))
                h += (val[v_id][w] - c * g) / (n_train * lam)
            hvp[w] = h
        for t_id in tr:
            out[t_id] += -sum(torch.sum(hvp[w] * tr[t_id][w]) for w in hvp)
    return out


def hand_built(n_train: int = 7, n_val: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tr = {i: {w: torch.randn(s, generator=gen, dtype=torch.float64) for w, s in SHAPES.items()}
          for i in range(n_train)}
    val = {j: {w: torch.randn(s, generator=gen, dtype=torch.float64) for w, s in SHAPES.items()}
           for j in range(n_val)}
    return tr, val


def ours(tr, val) -> torch.Tensor:
    """The framework's I for one block: Σ over its tensors of DataInf with q = Σ_val g_val."""
    total = torch.zeros(len(tr), dtype=torch.float64)
    for w in SHAPES:
        grads = torch.stack([tr[i][w].flatten() for i in tr])
        q = sum(val[j][w].flatten() for j in val)
        total += datainf_influence(grads, q, default_lambda(grads, 10.0))
    return total


def test_influence_is_minus_the_authors_summed_influence():
    tr, val = hand_built()
    torch.testing.assert_close(ours(tr, val), -authors_influence(tr, val), rtol=1e-10, atol=1e-12)


def test_scores_from_the_authors_influence():
    tr, val = hand_built(n_train=8, seed=1)
    paper = authors_influence(tr, val)  # negative = helpful
    I = ours(tr, val)[None].float()  # framework sign, one layer
    reg = get_registry()
    # "+VE" (the notebook's cell "Only positive IF Values"): delete the entries > 0, sum the rest;
    # in layerif's sign (and magnitude) that is Σ max(I, 0)
    got = reg.build("aggregator", "helpful_sum")(I)
    torch.testing.assert_close(got, -paper[paper <= 0].sum()[None].float(), rtol=1e-5, atol=1e-6)
    # "ALL": the plain sum
    got = reg.build("aggregator", "net_sum")(I)
    torch.testing.assert_close(got, -paper.sum()[None].float(), rtol=1e-5, atol=1e-5)
    # the reverse experiment sums the entries the notebook deletes
    got = reg.build("aggregator", "harmful_sum")(I)
    torch.testing.assert_close(got, paper[paper > 0].sum()[None].float(), rtol=1e-5, atol=1e-6)


def test_helpful_harmful_net_and_top_by_hand():
    # framework sign: I > 0 helpful
    I = torch.tensor([[1.0, -2.0, 3.0, -4.0, 0.5, -0.5, 2.0, -1.0],
                      [-3.0, -3.0, 1.0, 1.0, 1.0, 1.0, -6.0, 0.0]])
    reg = get_registry()
    torch.testing.assert_close(reg.build("aggregator", "helpful_sum")(I), torch.tensor([6.5, 4.0]))
    torch.testing.assert_close(reg.build("aggregator", "harmful_sum")(I), torch.tensor([7.5, 12.0]))
    torch.testing.assert_close(reg.build("aggregator", "net_sum")(I), torch.tensor([-1.0, -8.0]))
    # top 25% of 8 = the 2 largest: {3, 2} and {1, 1}; harmful side {4, 2} and {6, 3}
    torch.testing.assert_close(reg.build("aggregator", "top_helpful")(I), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(reg.build("aggregator", "top_harmful")(I), torch.tensor([6.0, 9.0]))
    # fraction 0.5: the 4 largest: {3, 2, 1, 0.5} and {1, 1, 1, 1}
    top_half = reg.build("aggregator", "top_helpful", {"fraction": 0.5})
    torch.testing.assert_close(top_half(I), torch.tensor([6.5, 4.0]))
