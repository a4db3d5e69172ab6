"""K-FAC and EK-FAC: equal to ``exact`` where the Kronecker factorisation is exact by construction,
EK-FAC's eigenvalues equal their definition, scores do not depend on batch size or train order, and
fitted factors are reused by a second task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_est_exact import example_grads, small_ctx
from torch import nn

from conftest import make_ctx
from layerif_core.data import IGNORE, TokenizedSplit
from layerif_core.errors import ConfigError
from layerif_core.pipeline import compute_layer_scores, load_task_splits
from layerif_core.registry import get_registry


class Block(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=True)


class OneLinearLM(nn.Module):
    """A "language model" with one tracked linear map ``y = W a + b`` that sees only the first token,
    and logits ``base + (y − stopgrad(y)) R``: their value does not depend on the input, so the
    output gradient ``δ = R (softmax(base) − e_label)`` is the same for every example with the same
    label. Then ``g_i = δ ã_iᵀ`` and the per-example Fisher is exactly ``E[ã ãᵀ] ⊗ δ δᵀ``."""

    def __init__(self, vocab: int, d_in: int = 4, d_out: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(num_hidden_layers=1)
        self.embed = nn.Embedding(vocab, d_in)
        self.layers = nn.ModuleList([Block(d_in, d_out)])
        self.register_buffer("readout", torch.randn(d_out, vocab))
        self.register_buffer("base", torch.randn(vocab))

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, t = input_ids.shape
        y = self.layers[0].proj(self.embed(input_ids[:, :1]))  # [B, 1, d_out]
        first = self.base + (y - y.detach()) @ self.readout
        return SimpleNamespace(logits=torch.cat([first, self.base.expand(b, t - 1, -1)], dim=1))


def two_token_split(name: str, firsts: list[int], label: int) -> TokenizedSplit:
    return TokenizedSplit(name, [[f, label] for f in firsts], [[IGNORE, label] for _ in firsts],
                          f"{name}-{firsts}-{label}")


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_equals_exact_when_the_kronecker_factorisation_is_exact(tmp_path, name):
    ctx = make_ctx(tmp_path, model=OneLinearLM(vocab=30))
    train = two_token_split("train", list(range(3, 17)), label=5)
    query = two_token_split("query", [20, 21, 22], label=5)
    reg = get_registry()
    want = reg.build("estimator", "exact", {"fisher": "empirical"}).influence(ctx, train, query)
    got = reg.build("estimator", name, {"fisher": "empirical"}).influence(ctx, train, query)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_ekfac_eigenvalues_equal_their_definition(tmp_path):
    """Λ*[j, k] = mean_i (Q_Sᵀ g_i Q_A)[j, k]² on explicit autograd per-example gradients."""
    ctx = small_ctx(tmp_path, n_train=6, layers={"modules": "all"})
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", "ekfac", {"fisher": "empirical"})
    est.fit(ctx, train)
    grads = example_grads(ctx, train)
    for l, layer in enumerate(ctx.layer_map.layers):
        start = 0
        for tm in layer:
            cols = tm.d_in + int(tm.has_bias)
            g = torch.stack([e[l][start:start + tm.d_out * cols] for e in grads]).view(-1, tm.d_out, cols)
            start += tm.d_out * cols
            qs, qa = est._eigen[f"{tm.name}.QS"].double(), est._eigen[f"{tm.name}.QA"].double()
            want = (qs.T @ g @ qa).square().mean(dim=0)
            torch.testing.assert_close(est._lambda[tm.name].double(), want, rtol=1e-4,
                                       atol=1e-5 * want.max().item())


def test_scores_do_not_depend_on_batch_size_or_train_order(tmp_path):
    a = small_ctx(tmp_path / "a", n_train=7, batch_size=1, layers={"modules": "all"})
    b = small_ctx(tmp_path / "b", n_train=7, batch_size=5, layers={"modules": "all"})
    reg = get_registry()
    train, query = load_task_splits(a, a.config.tasks[0])
    ia = reg.build("estimator", "ekfac").influence(a, train, query)
    order = list(reversed(range(len(train))))
    ib = reg.build("estimator", "ekfac").influence(b, train.subset(order), query)[:, order]
    torch.testing.assert_close(ia, ib, rtol=1e-5, atol=1e-5 * ia.abs().max().item())


def test_factors_are_reused_by_a_second_task_with_the_same_train_split(tmp_path):
    train = {"source": "bundled:capitals", "limit": 5, "max_length": 96}
    tasks = [{"name": n, "train": train, "validation": {"source": f"bundled:{src}", "split": "validation",
                                                        "limit": 2, "max_length": 96}}
             for n, src in (("one", "capitals"), ("two", "antonyms"))]
    ctx = make_ctx(tmp_path, tasks=tasks, scorer={"estimator": {"name": "ekfac"}})
    compute_layer_scores(ctx)
    steps = {k: v for k, v in ctx.run_dir.manifest["steps"].items() if k.startswith("factors/")}
    assert {k.rsplit("/", 1)[1] for k in steps} == {"eigen", "lambda"}
    assert all(v["reused"] for v in steps.values()) and all("seconds" in v for v in steps.values())


def test_damping_must_be_positive():
    with pytest.raises(ConfigError, match="option 'damping': Input should be greater than 0"):
        get_registry().build("estimator", "ekfac", {"damping": 0})


def test_a_damping_rule_that_matches_no_module_is_refused(tmp_path):
    ctx = small_ctx(tmp_path, n_train=4)
    train, _ = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", "kfac", {"module_damping": {"mlp\\.nope": 1.0}})
    with pytest.raises(ConfigError, match=r"rule 'mlp\\\\.nope' matches no tracked module"):
        est.fit(ctx, train)


def test_default_estimator_is_ekfac(tmp_path):
    assert make_ctx(tmp_path).config.scorer.estimator.name == "ekfac"
