"""torch.distributed beyond data parallelism (architecture §8), with gloo on CPU: two ranks give the
single-process influence for every Kronecker estimator with module-parallel decomposition and
module partitions on, for DataInf stored and streamed (with partitions), and for a model sharded
with FSDP (``fully_shard``); a rank that dies stops the others with one clear error, and relaunching
resumes from the finished factors."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import char_tokenizer, make_config, tiny_model
from layerif_core.distributed import is_sharded, placement_error
from layerif_core.pipeline import load_task_splits, open_run
from layerif_core.registry import get_registry

# a budget of ~21 KB: several partitions on the tiny Llama, so every rank decomposes some groups
OPTIONS = {"ekfac": {"memory_budget_gb": 2e-5}, "kfac": {"memory_budget_gb": 2e-5},
           "grad_dot": None, "datainf": {"mode": "stored"},
           "datainf_streaming": {"mode": "streaming", "memory_budget_gb": 2e-5}}
NAMES = {"datainf_streaming": "datainf"}


def _influence(tmp_path, estimator: str, fsdp: bool = False) -> torch.Tensor:
    """``fsdp``: the config's ``model.fsdp`` shards the tiny Llama over the ranks in ``open_run``."""
    config = make_config(tmp_path, batch_size=2, layers={"modules": "all"},
                         model={"device": "cpu", "fsdp": fsdp})
    ctx = open_run(config, show_progress=False, model=tiny_model("llama"), tokenizer=char_tokenizer())
    assert is_sharded(ctx.model) == (fsdp and dist.is_initialized())
    train, query = load_task_splits(ctx, ctx.config.tasks[0])
    est = get_registry().build("estimator", NAMES.get(estimator, estimator), OPTIONS[estimator])
    return est.influence(ctx, train, query)


def _worker(rank: int, world: int, init: str, tmp_path, estimator: str, fsdp: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = _influence(tmp_path / f"rank{rank}", estimator, fsdp)
        torch.save(result, f"{out}.{rank}")
        dist.barrier()  # no rank leaves the group while the other still sends
    finally:
        dist.destroy_process_group()
    # the result is on disk: skip interpreter teardown, where gloo work handles still held by FSDP's
    # sharded parameters can be freed after their group (std::terminate, SIGABRT in one rank)
    os._exit(0)


def _two_ranks(tmp_path, estimator: str, fsdp: bool = False) -> list[torch.Tensor]:
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", tmp_path, estimator, fsdp, out),
             nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["ekfac", "kfac", "grad_dot", "datainf", "datainf_streaming"])
def test_two_gloo_ranks_with_module_parallel_decomposition_match_one_process(tmp_path, estimator):
    single = _influence(tmp_path / "single", estimator)
    ranks = _two_ranks(tmp_path, estimator)
    assert single.abs().max() > 0
    for got in ranks:  # every rank ends with the full influence matrix
        torch.testing.assert_close(got, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())


@pytest.mark.slow
def test_an_fsdp_sharded_model_gives_the_same_influence(tmp_path):
    single = _influence(tmp_path / "single", "ekfac")
    ranks = _two_ranks(tmp_path, "ekfac", fsdp=True)
    for got in ranks:
        torch.testing.assert_close(got, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())


def test_a_model_too_large_for_the_device_is_told_how_to_launch_with_fsdp():
    message = placement_error(52.0, 40.0, torch.device("cuda", 0))
    assert "52.0 GiB" in message and "40.0 GiB free" in message
    assert "model.fsdp: true" in message and "torchrun --nproc_per_node 4 -m layerif_core.cli run" in message
    assert placement_error(10.0, 40.0, torch.device("cuda", 0)) is None


def _launched_worker(rank: int, world: int, port: int, tmp_path, out: str) -> None:
    """A rank as ``torchrun`` starts it: only environment variables, no process group yet."""
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    try:
        result = _influence(tmp_path / f"rank{rank}", "ekfac")  # open_run joins the group
        assert dist.is_initialized() and dist.get_world_size() == world
        torch.save(result, f"{out}.{rank}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_started_like_torchrun_join_the_group_in_open_run(tmp_path):
    single = _influence(tmp_path / "single", "ekfac")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "launched.pt")
    mp.spawn(_launched_worker, args=(2, port, tmp_path, out), nprocs=2, join=True)
    for r in range(2):
        got = torch.load(f"{out}.{r}", weights_only=True)
        torch.testing.assert_close(got, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())


def _dying_worker(rank: int, world: int, init: str, run: str, out: str, die: bool) -> None:
    """Both ranks write one run directory (rank 0 alone writes); with ``die``, rank 1 exits at the
    start of the eigenvalue-correction stage, after the covariance stage has finished."""
    from pathlib import Path

    from layerif_core.errors import DistributedError
    from layerif_core.estimators import factors

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    fits = {"covariance": 0}
    fit_covariances, correct = factors.fit_covariances, factors.fit_corrected_eigenvalues

    def counted(*args, **kwargs):
        fits["covariance"] += 1
        return fit_covariances(*args, **kwargs)

    def dying(*args, **kwargs):
        if die and rank == 1:
            os._exit(1)
        return correct(*args, **kwargs)

    factors.fit_covariances, factors.fit_corrected_eigenvalues = counted, dying
    try:
        result = _influence(Path(run), "ekfac")
        torch.save({"influence": result, "covariance_fits": fits["covariance"]}, f"{out}.{rank}")
    except DistributedError as exc:
        Path(f"{out}.{rank}.error").write_text(str(exc))
        os._exit(0)  # like a rank stopped by torchrun: no clean shutdown of the group
    dist.destroy_process_group()


def _launch(tmp_path, name: str, die: bool) -> list[int]:
    procs = mp.start_processes(_dying_worker, nprocs=2, join=False, start_method="spawn", args=(
        2, f"file://{tmp_path / f'init-{name}'}", str(tmp_path / "shared"), str(tmp_path / name), die))
    for p in procs.processes:
        p.join(300)
    return [p.exitcode for p in procs.processes]


@pytest.mark.slow
def test_a_rank_that_dies_mid_run_stops_the_others_with_a_clear_error_and_a_rerun_resumes(tmp_path):
    from safetensors.torch import load_file

    single = _influence(tmp_path / "single", "ekfac")
    assert _launch(tmp_path, "died", die=True) == [0, 1]
    message = (tmp_path / "died.0.error").read_text()
    assert message.startswith("rank 0 of 2 lost the other ranks during ")
    assert "relaunching the same command resumes" in message
    eigen = list((tmp_path / "shared").rglob("eigen/*.safetensors"))
    assert eigen and not list((tmp_path / "shared").rglob("lambda/*.safetensors"))
    before = {p: load_file(str(p)) for p in eigen}

    assert _launch(tmp_path, "rerun", die=False) == [0, 0]
    for r in range(2):
        got = torch.load(tmp_path / f"rerun.{r}", weights_only=True)
        assert got["covariance_fits"] == 0  # the finished stage is reused, not refitted
        torch.testing.assert_close(got["influence"], single, rtol=1e-4,
                                   atol=1e-5 * single.abs().max().item())
    for p, tensors in before.items():
        for k, v in load_file(str(p)).items():
            assert torch.equal(v, tensors[k])
