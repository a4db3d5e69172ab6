"""The GPU benchmark script runs every phase at its CPU check size (``--scale tiny``) and reports
finite results, so a GPU machine gets a script that works (no timing is checked here)."""

import math

from benchmarks.bench_gpu import parse, run_phases


def test_every_phase_runs_at_the_tiny_scale_on_a_cpu(tmp_path):
    phases = ["throughput", "smollm2", "tinyllama", "mistral7b", "datainf7b", "datainf_stream7b",
              "profile"]
    results = run_phases(parse(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path),
                                "--phases", *phases]))
    assert list(results["phases"]) == phases
    got = {name: phase["result"] for name, phase in results["phases"].items()}
    for name, res in got.items():
        assert "error" not in res, (name, res)
    assert all(v > 0 for v in got["throughput"]["matmul_flops_per_s"].values())
    rows = got["smollm2"] + [got["tinyllama"], got["mistral7b"]]
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16", "float32", "bfloat16"]
    for row in rows:
        assert row["ekfac"]["finite"] and row["ekfac"]["modules"] == 14  # 7 linears × 2 blocks
        assert math.isfinite(row["ekfac_over_flop_floor"]) and row["ekfac_flop_floor_s"] > 0
    assert got["datainf7b"]["finite"] and got["datainf7b"]["paper_seconds_per_layer"] == 402.77
    stream = got["datainf_stream7b"]
    assert stream["finite"] and stream["paper_seconds_per_block"] == 402.77 and stream["layers"] == 2
    assert stream["seconds_per_block"] > 0 and math.isfinite(stream["projected_32_blocks_300x50_s"])
    assert stream["x_plain_pass"] > 0 and sum(stream["norm_branches"].values()) > 0
    assert set(got["profile"]) == {"plain_training_pass", "covariance_eigh", "correction"}
    assert all(stage["launches_per_batch"] > 0 for stage in got["profile"].values())
    assert (tmp_path / "bench_gpu.json").is_file()
