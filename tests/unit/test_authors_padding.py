"""``scorer.loss.padding: authors`` in the estimators other than DataInf (whose reference test is
``tests/reference/test_tiny_authors_padding_bf16.py``): grad_dot's influences are the inner products
of the gradients of the authors' padded Hugging Face loss, and EK-FAC's input covariance counts the
pads (positions in the loss) as tokens."""

from __future__ import annotations

import torch

from conftest import make_ctx
from layerif_core.estimators.factors import fit_covariances, module_groups
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry

AUTHORS = {"loss": {"tokens": "all", "reduction": "mean", "padding": "authors"}}
PLAIN = {"loss": {"tokens": "all", "reduction": "mean"}}


def padded_by_hand(ids: list[list[int]], eos: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each sequence right-padded with EOS to the longest, and its attention mask (0 on the pads)."""
    width = max(len(x) for x in ids)
    return [(torch.tensor([x + [eos] * (width - len(x))]),
             torch.tensor([[1] * len(x) + [0] * (width - len(x))])) for x in ids]


def hf_gradients(ctx, ids: list[list[int]]) -> list[list[torch.Tensor]]:
    """Per example, per layer: the gradient of the HF loss with labels = input_ids (pads included)
    w.r.t. the layer's tracked weights, one backward per example."""
    out = []
    for x, mask in padded_by_hand(ids, ctx.tokenizer.eos_token_id):
        ctx.model.zero_grad()
        ctx.model(input_ids=x, attention_mask=mask, labels=x).loss.backward()
        out.append([torch.cat([tm.grad_matrix().flatten() for tm in layer]).double()
                    for layer in ctx.layer_map.layers])
    return out


def test_grad_dot_with_the_authors_padding_is_the_inner_product_of_their_gradients(tmp_path):
    plain = make_ctx(tmp_path / "plain", scorer=PLAIN)
    own_train, own_query = load_task_splits(plain, plain.config.tasks[0])
    ctx = make_ctx(tmp_path / "authors", scorer=AUTHORS)
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    got = get_registry().build("estimator", "grad_dot").influence(ctx, train, query).double()
    g_train = hf_gradients(ctx, own_train.input_ids)
    q = [sum(g[l] for g in hf_gradients(ctx, own_query.input_ids)) for l in range(len(ctx.layer_map))]
    want = torch.tensor([[float(q[l] @ g[l]) for g in g_train] for l in range(len(ctx.layer_map))],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    unpadded = get_registry().build("estimator", "grad_dot").influence(plain, own_train, own_query)
    assert (unpadded.double() - want).abs().max() > 1e-2 * want.abs().max()


def test_ekfac_input_covariance_counts_the_pads_in_the_loss(tmp_path):
    ctx = make_ctx(tmp_path, scorer=AUTHORS, batch_size=3)
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    assert len(set(train.attended)) > 1  # some examples have pads
    groups = module_groups(ctx, train)
    cov = fit_covariances(ctx, train, get_registry().build("estimator", "ekfac").options, groups)
    g = groups[0]
    seen = []
    handle = g.modules[0].module.register_forward_hook(lambda _m, i, _o: seen.append(i[0].detach()))
    with torch.no_grad():
        for batch in train.batches(len(train)):
            ctx.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    handle.remove()
    a = torch.cat(seen).double().flatten(0, 1)  # every position of every padded example
    want = a.T @ a / a.shape[0]
    torch.testing.assert_close(cov[f"{g.key}.A"].double(), want, rtol=1e-5,
                               atol=1e-6 * want.abs().max().item())
