"""CLI start-up: `layerif --help`, `tasks`, `init`, `config check`, `config schema` and `plugins`
against `python -c "import typer"` (the floor of any typer CLI), best of N runs each, and whether
the command imported torch (it must not: heavy imports live in the commands that do real work).

Goal: each listed command ≤ 1.5 s on a 2-core x86 CPU.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.5


def _best(argv: list[str], repeats: int, cwd: Path) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def _imports_torch(args: list[str], cwd: Path) -> bool:
    code = ("import sys, runpy; sys.argv = ['layerif', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('layerif_core.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('\\nTORCH' if 'torch' in sys.modules else '\\nNO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)
    return out.stdout.rstrip().endswith("\nTORCH")


def run(quick: bool = False) -> dict:
    repeats = 3 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        config = str(ROOT / "examples" / "quickstart.yaml")
        commands = {"--help": ["--help"], "tasks": ["tasks"], "init": ["init", "x.yaml", "--overwrite"],
                    "config check": ["config", "check", config], "config schema": ["config", "schema"],
                    "plugins": ["plugins", "--json"]}
        floor = _best([sys.executable, "-c", "import typer"], repeats, cwd)
        table = []
        for label, args in commands.items():
            seconds = _best([sys.executable, "-m", "layerif_core.cli", *args], repeats, cwd)
            table.append({"command": f"layerif {label}", f"seconds (best of {repeats})": round(seconds, 3),
                          "× import typer": round(seconds / floor, 2),
                          "imports torch": _imports_torch(args, cwd),
                          "goal ≤ 1.5 s": "met" if seconds <= GOAL_SECONDS else "missed"})
    return {"import_typer_seconds": round(floor, 3), "table": table}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
