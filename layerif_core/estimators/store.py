"""The factor store (architecture §8): one safetensors file per shared-input group and stage under
``factors/<fingerprint>/<stage>/``, written as soon as that group is finished.

Factors live on the device only while a pass or a decomposition needs them; between uses they stay
in CPU RAM (``offload="cpu"``) or only on disk, read back memory-mapped with ``safe_open``
(``offload="disk"``). A rerun skips every group whose file exists with the same fingerprint, so an
interrupted fit resumes where it stopped.

Under torch.distributed rank 0 alone writes and holds the factors; :meth:`FactorStore.get`
broadcasts them from rank 0 and :meth:`FactorStore.put` takes them from the rank that computed them
(module-parallel decomposition), so the run directory need not be shared between ranks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from layerif_core.artifacts import RunDir
from layerif_core.distributed import broadcast_, is_main, world
from layerif_core.errors import ArtifactError
from layerif_core.estimators.memory import Group

# the tensors of one group and stage: name -> shape
Layout = Callable[[str, Group], dict[str, tuple[int, ...]]]


class FactorStore:
    """Per-group factor files of one fit (one fingerprint), with an optional CPU copy."""

    def __init__(self, run_dir: RunDir, fingerprint: str, layout: Layout, offload: str = "cpu"):
        if offload not in ("cpu", "disk"):
            raise ValueError(f"offload must be 'cpu' or 'disk', not {offload!r}")
        self.run_dir = run_dir
        self.fingerprint = fingerprint
        self.layout = layout
        self.offload = offload
        self._ram: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    @property
    def root(self) -> str:
        return f"factors/{self.fingerprint}"

    def rel(self, stage: str, group: Group) -> str:
        return f"{self.root}/{stage}/{re.sub(r'[^A-Za-z0-9_.+-]', '_', group.key)}.safetensors"

    def path(self, stage: str, group: Group) -> Path:
        return self.run_dir.file(self.rel(stage, group))

    def done(self, stage: str, groups: list[Group]) -> list[bool]:
        """Which groups of ``stage`` are already on disk (decided by rank 0, shared by all)."""
        flags = torch.zeros(len(groups), dtype=torch.int32)
        if is_main() and not self.run_dir.force:
            for i, g in enumerate(groups):
                flags[i] = int(self._complete(stage, g))
        if world()[1] > 1:
            broadcast_(flags, 0)
        return [bool(f) for f in flags.tolist()]

    def _complete(self, stage: str, group: Group) -> bool:
        path = self.path(stage, group)
        if not self.run_dir.verify(self.rel(stage, group)):  # missing, or not the bytes written
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
        except Exception:
            self.run_dir.discard(self.rel(stage, group), "is not a readable safetensors file "
                                 "(truncated or damaged)")
            return False
        return meta.get("fingerprint") == self.fingerprint and keys == set(self.layout(stage, group))

    def put(self, stage: str, group: Group, tensors: dict[str, torch.Tensor] | None,
            src: int = 0, device: torch.device | None = None) -> None:
        """Store one finished group: computed on rank ``src`` (``tensors`` None on the others)."""
        if world()[1] > 1:
            tensors = self._broadcast(stage, group, tensors, src, device)
        if not is_main():
            return
        cpu = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
        self.run_dir.write_tensors(self.rel(stage, group), cpu, {"fingerprint": self.fingerprint})
        if self.offload == "cpu":
            self._ram[(stage, group.key)] = cpu

    def get(self, stage: str, group: Group, device: torch.device) -> dict[str, torch.Tensor]:
        """The group's tensors of ``stage`` on ``device`` (float32)."""
        found = self._read(stage, group, device) if is_main() else None
        if world()[1] > 1:
            found = self._broadcast(stage, group, found, 0, device)
        return found

    def _read(self, stage: str, group: Group, device: torch.device) -> dict[str, torch.Tensor]:
        held = self._ram.get((stage, group.key))
        if held is not None:
            return {k: v.to(device) for k, v in held.items()}
        path = self.path(stage, group)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                out = {k: f.get_tensor(k) for k in self.layout(stage, group)}
        except Exception:
            raise ArtifactError(f"'{path}' is missing or unreadable; rerun with --force to refit "
                                "the factors.") from None
        if self.offload == "cpu":
            self._ram[(stage, group.key)] = {k: v.cpu() for k, v in out.items()}
        return out

    def _broadcast(self, stage: str, group: Group, tensors: dict[str, torch.Tensor] | None,
                   src: int, device: torch.device | None) -> dict[str, torch.Tensor]:
        """One flat float32 buffer from ``src`` to every rank, split back by the layout."""
        layout = self.layout(stage, group)
        sizes = [int(torch.Size(s).numel()) for s in layout.values()]
        if world()[0] == src:
            flat = torch.cat([tensors[k].reshape(-1).float() for k in layout])
            device = flat.device
        else:
            flat = torch.empty(sum(sizes), device=device)
        broadcast_(flat, src)
        return {k: part.view(shape) for (k, shape), part in
                zip(layout.items(), flat.split(sizes), strict=True)}

    def drop(self) -> None:
        """Forget the CPU copies (the files stay)."""
        self._ram.clear()
