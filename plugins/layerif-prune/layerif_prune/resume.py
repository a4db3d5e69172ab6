"""Resumable pruning: the state after each finished block, in ``<run>/prune_state/``.

After block l is pruned and has given block l + 1 its inputs, ``block_<l>.safetensors`` keeps the
block's pruned weights and masks, then ``inputs.safetensors`` (written last, atomically: the commit
point) keeps block l + 1's input hidden states with the fingerprint of the run's inputs and the index
of the block they feed. A rerun with the same fingerprint restores blocks 0..l and continues at
l + 1; the other block arguments (attention mask, positions, rotary embeddings) do not depend on the
pruning and are captured again. Restored values are the saved tensors, so a resumed run ends with the
weights and masks of an uninterrupted one. The directory is removed when the run completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from typing import Any

import torch

from layerif_core.artifacts import RunDir
from layerif_core.layers import TrackedModule

log = logging.getLogger("layerif")

STATE = "prune_state"


def fingerprint(parts: dict[str, Any], windows: torch.Tensor | None) -> str:
    """A hash of everything the pruned weights depend on: options, targets, model, calibration."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    if windows is not None:
        h.update(windows.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class BlockCheckpoint:
    """Per-block pruning state of one run directory (see the module docstring)."""

    def __init__(self, run_dir: RunDir, fingerprint: str):
        self.run_dir = run_dir
        self.fingerprint = fingerprint

    def _rel(self, name: str) -> str:
        return f"{STATE}/{name}"

    def resume(self, modules_of: list[list[TrackedModule]], masks: dict[str, torch.Tensor]
               ) -> tuple[int, list[torch.Tensor] | None]:
        """Restore the finished blocks into the model and ``masks``; return the first block to
        prune and its input hidden states (``0, None`` when there is nothing to resume)."""
        found = None if self.run_dir.force else self.run_dir.read_tensors(self._rel("inputs.safetensors"))
        if found is None or found[1].get("fingerprint") != self.fingerprint:
            self.clear()
            return 0, None
        tensors, meta = found
        start = int(meta["next_block"])
        for layer in range(start):
            saved, _ = self.run_dir.read_tensors(self._rel(f"block_{layer}.safetensors")) or ({}, {})
            for tm in modules_of[layer]:
                if f"weight:{tm.name}" not in saved:  # an incomplete state: start again
                    self.clear()
                    return 0, None
                tm.module.weight.data.copy_(saved[f"weight:{tm.name}"])
                masks[tm.name] = saved[f"mask:{tm.name}"]
        hidden = [tensors[f"hidden.{i}"] for i in range(len(tensors))]
        log.info("resuming pruning at block %d of %d (state in %s)", start, len(modules_of),
                 self.run_dir.file(STATE))
        return start, hidden

    def save(self, layer: int, modules: list[TrackedModule], masks: dict[str, torch.Tensor],
             hidden: list[torch.Tensor]) -> None:
        """Keep block ``layer``'s pruned weights and masks, then the next block's inputs."""
        block = {f"weight:{tm.name}": tm.module.weight.data for tm in modules}
        block.update({f"mask:{tm.name}": masks[tm.name] for tm in modules})
        self.run_dir.write_tensors(self._rel(f"block_{layer}.safetensors"), block)
        self.run_dir.write_tensors(self._rel("inputs.safetensors"),
                                   {f"hidden.{i}": h for i, h in enumerate(hidden)},
                                   {"fingerprint": self.fingerprint, "next_block": str(layer + 1)})

    def clear(self) -> None:
        """Remove the state (the run completed, or the state belongs to other inputs)."""
        shutil.rmtree(self.run_dir.file(STATE), ignore_errors=True)
