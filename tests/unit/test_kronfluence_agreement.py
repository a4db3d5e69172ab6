"""Our ``ekfac`` equals the reference implementation, kronfluence (EK-FAC, its damping heuristic
``damping_factor=None`` = 0.1 × mean EK-FAC eigenvalue per module, per-module pairwise scores), on a
tiny random Llama: the same per-example, per-layer influences ``I[l, i]`` (same sign: positive =
helpful) for the empirical and the true Fisher. Runs only where kronfluence is installed
(``nox -s tests`` and ``nox -s bench`` install it)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import make_ctx, tiny_model
from layerif_core.data import IGNORE, Batch
from layerif_core.losses import sample_labels
from layerif_core.pipeline import load_task_splits
from layerif_core.registry import get_registry

kronfluence = pytest.importorskip("kronfluence")

from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402
from kronfluence.utils.dataset import DataLoaderKwargs  # noqa: E402


class SummedTokenLoss(Task):
    """DESIGN §4's loss, written out: summed next-token cross-entropy over sequences and batch.

    ``sample=True`` (true Fisher) uses our seeded label draw, so both sides see the same labels."""

    def __init__(self, names: list[str], seed: int):
        self.names, self.seed = names, seed

    def loss(self, batch: dict, model, sample: bool) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1].float()
        labels = batch["labels"]
        if sample:  # drawn from this same forward, as the true Fisher's labels are
            rows = Batch(batch["input_ids"], batch["attention_mask"], labels, torch.arange(len(labels)))
            labels = sample_labels(logits.detach(), rows, self.seed)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE, reduction="sum")

    def compute_train_loss(self, batch, model, sample=False):
        return self.loss(batch, model, sample)

    def compute_measurement(self, batch, model):
        return self.loss(batch, model, sample=False)

    def get_influence_tracked_modules(self):
        return self.names

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


def collate(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    out = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
           "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
           "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long)}
    for r, (ids, labels) in enumerate(rows):
        out["input_ids"][r, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][r, : len(ids)] = 1
        out["labels"][r, : len(ids)] = torch.tensor(labels)
    return out


def kronfluence_influence(ctx, model, train, query, fisher: str, workdir) -> torch.Tensor:
    """``I[l, i]``: kronfluence's per-module pairwise scores summed over the query and each layer."""
    modules = ctx.layer_map.modules()
    task = SummedTokenLoss([tm.name for tm in modules], ctx.seed)
    analyzer = Analyzer("ref", prepare_model(model, task), task, cpu=True, disable_tqdm=True,
                        output_dir=str(workdir))
    kwargs = DataLoaderKwargs(collate_fn=collate)
    train_ds = list(zip(train.input_ids, train.labels, strict=True))
    query_ds = list(zip(query.input_ids, query.labels, strict=True))
    analyzer.fit_all_factors("f", dataset=train_ds, per_device_batch_size=ctx.batch_size,
                             dataloader_kwargs=kwargs,
                             factor_args=FactorArguments(strategy="ekfac",
                                                         use_empirical_fisher=fisher == "empirical"))
    analyzer.compute_pairwise_scores("s", "f", query_dataset=query_ds, train_dataset=train_ds,
                                     per_device_query_batch_size=len(query_ds),
                                     per_device_train_batch_size=ctx.batch_size, dataloader_kwargs=kwargs,
                                     score_args=ScoreArguments(damping_factor=None,
                                                               compute_per_module_scores=True))
    scores = analyzer.load_pairwise_scores("s")
    influence = torch.zeros(len(ctx.layer_map), len(train), dtype=torch.float64)
    for tm in modules:
        influence[tm.layer] += scores[tm.name].double().sum(dim=0)
    return influence


@pytest.mark.slow
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_ekfac_equals_kronfluence_on_a_tiny_llama(tmp_path, fisher):
    model = tiny_model("llama")
    ctx = make_ctx(tmp_path, model=model)  # 6 train (batches of 4 and 2), 3 query examples
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    reference = copy.deepcopy(model)  # kronfluence wraps its linear modules in place

    ours = get_registry().build("estimator", "ekfac", {"fisher": fisher}).influence(ctx, train, query)
    theirs = kronfluence_influence(ctx, reference, train, query, fisher, tmp_path / "kronfluence")

    assert ours.shape == theirs.shape == (len(ctx.layer_map), len(train))
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-4 * float(theirs.abs().max()))
