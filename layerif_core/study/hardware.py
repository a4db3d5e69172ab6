"""One processor per study: which processor a cell ran on, and the checks that keep a study's cells
on one.

A pruned model's perplexity follows its masks' near-ties, and the masks follow how the processor
rounds the float32 sums of the calibration passes: the same cell rerun on another CPU moved
perplexity by up to 10% at 70% sparsity (docs/results/studies.md#hardware). So a study compares
arms only between cells of one processor, identified by what decides that rounding:

- a cell run on the CPU: the CPU model and the vector instruction set torch dispatches to
  (``torch.backends.cpu.get_cpu_capability()``; the same model with AVX-512 off rounds as AVX2 does);
- a cell run on a GPU: the GPU's model name. Its host CPU only feeds data and does arithmetic on L
  numbers (allocations, smoothing) in float64, so two hosts of the same GPU model are one processor;
- a cell whose record has no hardware (restored from a results table): ``not recorded``. It cannot
  be shown to match a known one, so it counts as a processor of its own.

Which device a cell ran on is the ``device`` its record's ``versions`` states (written since this
check exists); older records ran with ``model.device: auto``, so a recorded GPU means a GPU run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from layerif_core.study.config import StudyError

UNKNOWN = "not recorded"
FLAG = "--allow-mixed-hardware"


def device_type(device: str) -> str:
    """The kind of device a ``model.device`` setting runs on: ``cuda`` or ``cpu`` (``auto``: cuda
    when one is visible). Never raises: a device that does not exist fails the cell itself."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def processor(versions: dict[str, str]) -> str:
    """The processor a cell ran on, from its record's ``versions`` (module docstring): the GPU's name
    for a GPU run, ``CPU model (capability)`` for a CPU run, ``not recorded`` when neither is known."""
    gpu, cpu = versions.get("gpu"), versions.get("cpu")
    device = versions.get("device") or ("cuda" if gpu else "cpu")
    if device == "cuda" and gpu:
        return f"{gpu} (GPU)"
    if cpu:
        return f"{cpu} ({versions.get('cpu_capability', '?')})"
    return UNKNOWN


def count(processors: Iterable[str]) -> dict[str, int]:
    """How many cells ran on each processor, the most frequent first."""
    counts: dict[str, int] = {}
    for p in processors:
        counts[p] = counts.get(p, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def describe(counts: dict[str, int]) -> str:
    """``A, 5 cells; B, 1 cell``."""
    return "; ".join(f"{p}, {n} cell{'s' * (n != 1)}" for p, n in counts.items())


def check_run(directory: Path, finished: dict[str, int], here: Iterable[str], allow: bool) -> None:
    """Refuse to add cells run on ``here`` to a study whose ``finished`` cells ran on another
    processor (or on several, or on an unrecorded one), unless ``allow``."""
    mine = sorted(set(here))
    if allow or not finished or not mine or (len(mine) == 1 and set(finished) == set(mine)):
        return
    raise StudyError(f"'{directory}' holds cells run on {describe(finished)}, and this machine runs "
                     f"its cells on {' and '.join(mine)}: one study's cells run on one processor "
                     f"model; run on {next(iter(finished))}, or pass {FLAG}, or set another "
                     "output_dir.")


def check_report(directory: Path, counts: dict[str, int], allow: bool) -> None:
    """Refuse a report over cells of several processors (an unrecorded one included), unless ``allow``."""
    if allow or len(counts) <= 1:
        return
    first = next(iter(counts))
    raise StudyError(f"'{directory}' holds cells of {len(counts)} processors ({describe(counts)}): a "
                     f"report compares arms on one; rerun the other cells on {first} (remove their "
                     f"cells/<id>.json and run the study there), or pass {FLAG} to report them "
                     "together (the summary then warns).")
