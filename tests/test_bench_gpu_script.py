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


def test_the_qwen_ekfac_cell_runs_at_the_tiny_scale_with_the_published_anchors(tmp_path):
    results = run_phases(parse(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path),
                                "--phases", "ekfac_qwen"]))
    res = results["phases"]["ekfac_qwen"]["result"]
    assert "error" not in res, res
    rows = res["rows"]
    assert [r["model"] for r in rows] == ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    anchors = [{"kronfluence (full dimension)": 84.7, "dattri-llm (rank-64 projection)": 12.8},
               {"kronfluence (full dimension)": 287.8, "dattri-llm (rank-64 projection)": 14.2}]
    assert [r["published_h200_s"] for r in rows] == anchors
    for row in rows:
        assert row["dtype"] == "float32" and (row["n_train"], row["n_query"]) == (8, 1)
        ek = row["ekfac"]
        assert ek["finite"] and ek["modules"] == 14  # 7 linears × 2 blocks
        stages = ek["covariance_eigh_s"] + ek["correction_s"] + ek["query_score_s"]
        assert min(ek["covariance_eigh_s"], ek["correction_s"], ek["query_score_s"]) >= 0
        assert abs(ek["seconds"] - stages) <= 0.02
    assert len(res["table"]) == 4 and "84.7" in res["table"][2] and "287.8" in res["table"][3]
