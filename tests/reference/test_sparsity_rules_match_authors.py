"""DLP, LSA, ALP and ATP: layerif's allocation on a tiny random-init Llama (3 blocks, float32) equals
the authors' rule restated in ``sparsity_rules_authors.py``; the same restatement with the sign or
the map changed does not.

layerif runs through its config and API (``open_run``, ``compute_layer_scores``, ``allocate``) with
batches of 4 padded examples; the reference runs one unpadded example at a time.
"""

from __future__ import annotations

import pytest
import torch

from layerif_core import compute_layer_scores, open_run
from layerif_core.config import RunConfig
from layerif_core.errors import ConfigError
from layerif_core.pipeline import allocate
from layerif_core.testing import char_tokenizer, tiny_model
from reference import sparsity_rules_authors as authors
from reference.layerif_side import text_task

SEED = 3
TOL = 1e-6  # sparsities; both sides in float64 where it matters, the scores stored as float32
TEXTS = ["The capital of France is Paris.", "Cold is the opposite of hot, and up of down.",
         "12 + 30 = 42", "A river runs through the old town towards the sea.",
         "QQQQQQQQQQQQQQ", "Seven times six is forty-two; nine minus four is five.",
         "ZXJ ZXJ ZXJ", "Books on the shelf, cups on the table, a cat by the door."]


def examples() -> list[list[int]]:
    tok = char_tokenizer()
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def layerif_allocation(tmp_path, scorer: dict, allocation: dict) -> list[float]:
    cfg = RunConfig.model_validate({
        "name": "run", "output_dir": str(tmp_path / "runs"), "batch_size": 4,
        "model": {"source": "tiny-llama", "dtype": "float32", "device": "cpu"},
        "tasks": [text_task(tmp_path / "data", TEXTS, TEXTS[:2])],
        "scorer": scorer, "allocation": allocation})
    ctx = open_run(cfg, show_progress=False, model=tiny_model(seed=SEED), tokenizer=char_tokenizer())
    return allocate(ctx, compute_layer_scores(ctx))["t"].values


def assert_equal(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == 3
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= TOL, (got, want)


def assert_far(got: list[float], wrong: list[float]) -> None:
    assert max(abs(a - b) for a, b in zip(got, wrong, strict=True)) > 100 * TOL, (got, wrong)


def reversed_map(sparsities: list[float], target: float) -> list[float]:
    """The sign error: the same offsets from the target, with the opposite sign."""
    return [2 * target - s for s in sparsities]


@pytest.mark.parametrize("strategy", ["median", "mean"])
def test_dlp_equals_the_authors_ratios(tmp_path, strategy):
    want = authors.dlp_sparsities(tiny_model(seed=SEED), examples(), 0.7, 0.15, strategy)
    got = layerif_allocation(tmp_path, {"name": "dlp", "options": {"statistic": strategy}},
                             {"name": "dlp_sparsity", "options": {"sparsity": 0.7}})  # α 0.15 at 0.7
    assert_equal(got, want)
    assert_far(got, reversed_map(want, 0.7))


def test_dlp_median_and_mean_disagree_here():
    # what makes the statistic option matter on this model
    model, ex = tiny_model(seed=SEED), examples()
    assert_far(authors.dlp_sparsities(model, ex, 0.7, 0.15, "median"),
               authors.dlp_sparsities(model, ex, 0.7, 0.15, "mean"))


@pytest.mark.parametrize("block_size", [8, 0])
def test_lsa_equals_the_authors_ratios(tmp_path, block_size):
    want = authors.lsa_sparsities(tiny_model(seed=SEED), examples(), 0.6, 0.1, block_size)
    got = layerif_allocation(tmp_path, {"name": "lsa", "options": {"block_size": block_size}},
                             {"name": "dlp_sparsity", "options": {"sparsity": 0.6}})  # α 0.1 at 0.6
    assert_equal(got, want)
    assert_far(got, reversed_map(want, 0.6))


def test_lsa_greedy_differs_from_pruning_the_smallest_single_costs():
    # the cross terms matter: pruning by w_j² H_jj alone (no update) gives other statistics
    model, ex = tiny_model(seed=SEED), examples()
    greedy = authors.lsa_statistic(model, ex, block_size=8)
    hs = authors.lsa_hessians(model, ex)
    naive = []
    for i, block in enumerate(authors.blocks(model)):
        errs = []
        for name, lin in authors.find_layers(block).items():
            w, h = lin.weight.data.double(), hs[(i, name)]
            total = 0.0
            for row in w:
                for g in range(0, len(row), 8):
                    cols = g + torch.argsort(row[g:g + 8] ** 2 * h.diagonal()[g:g + 8])[:4]
                    total += float(row[cols] @ h[cols][:, cols] @ row[cols])
            errs.append(total)
        naive.append(sum(errs) / len(errs))
    assert max(abs(a - b) / abs(b) for a, b in zip(greedy, naive, strict=True)) > 1e-4


def test_alp_equals_the_authors_ratios(tmp_path):
    want = authors.alp_sparsities(tiny_model(seed=SEED), examples(), 0.7, 0.15)
    got = layerif_allocation(tmp_path, {"name": "alp"},
                             {"name": "dlp_sparsity", "options": {"sparsity": 0.7, "alpha": 0.15}})
    assert_equal(got, want)
    assert_far(got, reversed_map(want, 0.7))


@pytest.mark.parametrize("options", [{"tokens": "all"}, {"accumulate": "sum"}])
def test_alp_other_loss_or_accumulation_is_another_allocation(tmp_path, options):
    want = authors.alp_sparsities(tiny_model(seed=SEED), examples(), 0.7, 0.15)
    got = layerif_allocation(tmp_path, {"name": "alp", "options": options},
                             {"name": "dlp_sparsity", "options": {"sparsity": 0.7, "alpha": 0.15}})
    assert_far(got, want)


@pytest.mark.parametrize(("sparsity", "beta"), [(0.5, 0.0), (0.5, 0.1), (0.7, 0.15), (0.3, 0.3)])
def test_atp_equals_the_authors_progression(tmp_path, sparsity, beta):
    want = authors.atp_sparsities(3, sparsity, beta)
    got = layerif_allocation(tmp_path, {"name": "uniform"},
                             {"name": "atp_sparsity", "options": {"sparsity": sparsity, "beta": beta}})
    assert_equal(got, want)
    if beta:
        assert_far(got, reversed_map(want, sparsity))


def test_atp_refuses_the_beta_the_authors_call_illegal(tmp_path):
    with pytest.raises(ValueError, match="Illegal beta"):
        authors.atp_sparsities(3, 0.7, 0.31)
    with pytest.raises(ConfigError, match=r"beta 0.31 .* use beta <= 0.3\b"):
        layerif_allocation(tmp_path, {"name": "uniform"},
                           {"name": "atp_sparsity", "options": {"sparsity": 0.7, "beta": 0.31}})


@pytest.mark.parametrize(("n_layers", "sparsity"), [(30, 0.7), (30, 0.5), (32, 0.6), (3, 0.5)])
def test_atp_search_grid_is_the_authors(n_layers, sparsity):
    from layerif_core.allocators.sparsity import beta_grid

    want = authors.atp_search_grid(n_layers, sparsity)
    assert beta_grid(sparsity, torch.ones(n_layers, dtype=torch.float64)) == pytest.approx(want, abs=1e-12)
    assert len(want) >= 5
