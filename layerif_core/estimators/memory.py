"""Memory planning of the curvature passes (architecture §8): shared-input groups and module
partitions chosen from a device memory budget.

A 7B model's K-FAC factors do not fit one device at once (Mistral-7B: ~92 GB of float32
covariances). So the tracked modules are grouped by shared input (q/k/v read the same tensor, so do
gate/up: one ``A`` covariance and one eigendecomposition per group), each stage says how many bytes a
group needs on the device, and the groups are packed into the fewest partitions that fit the budget
(first-fit decreasing). Each pass then runs once per partition; ``P = 1`` whenever everything fits.
The plan is logged before the pass starts and recorded in the manifest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from layerif_core.errors import ConfigError
from layerif_core.layers import TrackedModule

GB = 1024**3
FLOAT32 = 4

log = logging.getLogger("layerif")


@dataclass
class Group:
    """Tracked modules that read the same input tensor: one ``A`` covariance, one ``Q_A``."""

    modules: list[TrackedModule]

    @property
    def key(self) -> str:
        """The group's name: its first module's, plus the short names of the others."""
        head = self.modules[0].name
        rest = [tm.short.rsplit(".", 1)[-1] for tm in self.modules[1:]]
        return "+".join([head, *rest])

    @property
    def d_in(self) -> int:
        """``d_in'``: input size plus one for the bias column (equal within a group)."""
        tm = self.modules[0]
        return tm.d_in + int(tm.has_bias)

    @property
    def names(self) -> list[str]:
        return [tm.name for tm in self.modules]


def shared_input_groups(model: nn.Module, modules: list[TrackedModule],
                        example: dict[str, torch.Tensor] | None) -> list[Group]:
    """Group ``modules`` whose forward receives the very same input tensor object.

    Detected on one forward of ``example`` (``input_ids``/``attention_mask`` of one sequence), so it
    holds for any architecture: Llama's q/k/v and gate/up share, GPT-2's fused ``c_attn`` stands
    alone. Modules with and without a bias never share (their ``ã`` differ). ``example=None`` (or a
    model that cannot run it) gives one group per module.
    """
    if example is None or len(modules) < 2:
        return [Group([tm]) for tm in modules]
    seen: dict[int, tuple[torch.Tensor, int]] = {}  # id(input) -> (input kept alive, group index)
    owner: dict[str, int] = {}
    groups: list[list[TrackedModule]] = []

    def hook(tm: TrackedModule) -> Callable:
        def pre(_m: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            hit = seen.get(id(x))
            if hit is not None and hit[0] is x and groups[hit[1]][0].has_bias == tm.has_bias:
                groups[hit[1]].append(tm)
                owner[tm.name] = hit[1]
                return
            seen[id(x)] = (x, len(groups))
            owner[tm.name] = len(groups)
            groups.append([tm])
        return pre

    handles = [tm.module.register_forward_pre_hook(hook(tm)) for tm in modules]
    try:
        with torch.no_grad():
            model(**example, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if len(owner) != len(modules):  # some module never ran on this example: keep it alone
        groups += [[tm] for tm in modules if tm.name not in owner]
    order = {tm.name: i for i, tm in enumerate(modules)}
    groups.sort(key=lambda g: order[g[0].name])
    return [Group(sorted(g, key=lambda tm: order[tm.name])) for g in groups]


def default_budget(device: torch.device) -> int:
    """Bytes the factors of one partition may take: half the free memory of a GPU (the other half
    is left to the forward/backward activations), a quarter of the available RAM on a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(_available_ram() * 0.25)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GB


def resolve_budget(budget_gb: float | None, device: torch.device) -> int:
    """The budget in bytes: ``budget_gb`` when given, else :func:`default_budget`."""
    return int(budget_gb * GB) if budget_gb is not None else default_budget(device)


# --- bytes each stage keeps on the device, per group (float32) ---------------------------------

def covariance_bytes(g: Group, batch_tokens: int = 0) -> int:
    """``A`` ``[d', d']`` once plus ``S`` ``[d_out, d_out]`` per module."""
    return FLOAT32 * (g.d_in**2 + sum(tm.d_out**2 for tm in g.modules))


def eigen_bytes(g: Group) -> int:
    """``Q_A, Λ_A`` plus ``Q_S, Λ_S`` per module."""
    return FLOAT32 * (g.d_in**2 + g.d_in + sum(tm.d_out**2 + tm.d_out for tm in g.modules))


def gradient_bytes(g: Group) -> int:
    """One weight-shaped ``[d_out, d']`` matrix per module (``Λ*``, ``q`` or ``V``)."""
    return FLOAT32 * sum(tm.d_out * g.d_in for tm in g.modules)


def correction_bytes(g: Group) -> int:
    """EK-FAC's correction pass: eigenbases and ``Λ*`` of the group."""
    return eigen_bytes(g) + gradient_bytes(g)


def correction_reserve(groups: list[Group], batch: int) -> int:
    """The correction pass's transient: one batch of rotated gradients ``[B, d_out, d']`` of the
    largest module (modules are processed one at a time)."""
    return max((FLOAT32 * batch * tm.d_out * g.d_in for g in groups for tm in g.modules), default=0)


def influence_bytes(g: Group) -> int:
    """Query and score passes: ``q`` turned into ``V = (G + λI)^{-1} q`` per module."""
    return gradient_bytes(g)


def influence_reserve(groups: list[Group]) -> int:
    """Preconditioning loads one group's eigenbases at a time: the largest."""
    return max((eigen_bytes(g) for g in groups), default=0)


def size(n: int) -> str:
    """Bytes for a message: ``12.35 GB``, ``3.2 MB``, ``9.0 KB``."""
    for unit, scale in (("GB", GB), ("MB", 1024**2)):
        if n >= scale / 10:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1024:.1f} KB"


@dataclass
class Plan:
    """Module partitions of one stage: each pass of the stage runs once per partition."""

    stage: str
    budget: int
    partitions: list[list[Group]] = field(default_factory=list)
    needs: list[int] = field(default_factory=list)

    @property
    def P(self) -> int:  # noqa: N802 (the name the docs use)
        return len(self.partitions)

    def modules(self, p: int) -> list[TrackedModule]:
        return [tm for g in self.partitions[p] for tm in g.modules]

    def to_json(self) -> dict:
        return {"P": self.P, "budget_gb": round(self.budget / GB, 3),
                "partitions": [{"modules": [n for g in part for n in g.names],
                                "groups": len(part), "gb": round(need / GB, 4)}
                               for part, need in zip(self.partitions, self.needs, strict=True)]}

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self.modules(p))} modules/{size(self.needs[p])}"
                          for p in range(self.P))
        return (f"{self.stage}: {self.P} module partition(s) within a {size(self.budget)} "
                f"device budget ({sizes})")


def plan_partitions(stage: str, groups: list[Group], need: Callable[[Group], int], budget: int,
                    reserve: int = 0) -> Plan:
    """Pack ``groups`` into the fewest partitions whose summed ``need`` fits ``budget`` less
    ``reserve`` (a transient the stage needs once, whatever the partition holds); first-fit
    decreasing, and partitions and their groups keep the model's order.

    Raises ``ConfigError`` naming the group when one alone needs more than the budget."""
    plan = Plan(stage, budget)
    if not groups:
        return plan
    order = {id(g): i for i, g in enumerate(groups)}
    biggest = max(groups, key=need)
    if need(biggest) + reserve > budget:
        raise ConfigError(
            f"{stage}: module {biggest.key} alone needs {size(need(biggest) + reserve)} on the "
            f"device, above the memory budget of {size(budget)}; raise memory_budget_gb (the "
            "estimator's option), free device memory, or track fewer/smaller modules.")
    budget -= reserve
    bins: list[list[Group]] = []
    loads: list[int] = []
    for g in sorted(groups, key=need, reverse=True):
        n = need(g)
        for i, load in enumerate(loads):
            if load + n <= budget:
                bins[i].append(g)
                loads[i] += n
                break
        else:
            bins.append([g])
            loads.append(n)
    parts = sorted((sorted(b, key=lambda g: order[id(g)]) for b in bins), key=lambda b: order[id(b[0])])
    plan.partitions = parts
    plan.needs = [sum(need(g) for g in b) + reserve for b in parts]
    return plan
