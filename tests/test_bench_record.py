"""``bench_gpu --phases throughput --record``: the measured numbers become a row of the device table
that ``layerif study --plan --device NAME`` reads."""

import json
import shutil

from benchmarks.bench_gpu import parse, run_phases
from layerif_core import cost


def test_the_throughput_phase_records_a_device_row_the_plan_reads(tmp_path, monkeypatch):
    table = tmp_path / "devices.json"
    shutil.copy(cost.DEVICES_FILE, table)
    results = run_phases(parse(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path),
                                "--phases", "throughput", "--record", str(table)]))
    measured = results["phases"]["throughput"]["result"]
    row = json.loads(table.read_text())[results["device"]]
    tflops = measured["matmul_flops_per_s"]["float32"] / 1e12
    assert abs(row["matmul_tflops"]["float32"] - tflops) <= 1e-3 * tflops
    assert row["source"].startswith("measured by benchmarks/bench_gpu.py")
    monkeypatch.setattr(cost, "DEVICES_FILE", table)
    device = cost.load_device(results["device"])
    assert device.matmul["float32"] == row["matmul_tflops"]["float32"] * 1e12
    assert "H200" in cost.device_table()  # the other rows stay
