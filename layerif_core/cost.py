"""What a stage of a run costs: matmul FLOPs, memory traffic and peak accelerator memory, from the
model's shapes alone, and the seconds that makes on a device (``layerif study --plan``; the
benchmarks' FLOP floor).

FLOP floor of an influence run (``ekfac_flops``; the benchmarks report measured time as a multiple
of it). Per token and tracked linear module ``y = W ã`` (``d'`` = ``d_in`` (+1 for a bias), ``d_out``):

- every pass (fit, query, score): forward ``2 d_in d_out`` and the input gradient ``2 d_in d_out``
  of *every* linear map of the model (lm_head included; parameters frozen, so no weight gradient),
  plus causal attention ``6 T d_attn`` per layer (QKᵀ and AV forward, four products backward, half
  of each skipped by the causal mask);
- EK-FAC's covariances: ``2 d'²`` per shared-input group (one A for q/k/v) and ``2 d_out²`` per
  module;
- the correction pass: the rotations ``ã Q_A`` (``2 d'²`` per group) and ``δ Q_S`` (``2 d_out²`` per
  module), and per example the rotated gradient ``Σ_t rδ_t raᵀ_t``: ``2 T d_out d'`` per module;
- the query gradient ``Σ_t δ_t ãᵀ_t`` (``2 d_out d'`` per query token) and the score ``δᵀ V ã``
  (``2 d_out d'`` per train token) per module.
Eigendecompositions are not matmuls: :class:`Cost` counts them apart (``eigh``), as ``9 n³``.

Seconds on a device (:meth:`Cost.seconds`): matmul FLOPs over the device's measured (or, where
nothing was measured, rated) matmul throughput in the stage's dtype times the share of it a model
pass reaches (``efficiency``), plus bandwidth-bound bytes (token-by-token generation) over its memory
bandwidth, plus eigendecompositions at its ``eigh`` rate. The device table is ``devices.json`` beside
this module; ``benchmarks/bench_gpu.py --phases throughput --record`` writes a measured row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from layerif_core.errors import ConfigError, closest


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int | None = None,
                            seconds: float = 1.0) -> float:
    """Measured throughput of square ``n × n`` matmuls in ``dtype`` on ``device`` (FLOP/s)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _sync(device)
    a @ b  # warm-up
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def linear_params(model: nn.Module) -> int:
    """``Σ d_in d_out`` over every linear map of the model (tied lm_head counted once as a map)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif type(m).__name__ == "Conv1D":  # GPT-2
            total += m.weight.shape[0] * m.weight.shape[1]
    return total


def attention_width(model: nn.Module) -> tuple[int, int]:
    """``(layers, heads × head_dim)`` from the model's config."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return layers, heads * head_dim


def pass_flops(model: nn.Module, n_seqs: int, seq_len: int) -> float:
    """Forward plus input-gradient backward of the whole model over ``n_seqs × seq_len`` tokens."""
    layers, width = attention_width(model)
    tokens = n_seqs * seq_len
    return 4.0 * linear_params(model) * tokens + 6.0 * layers * width * seq_len * tokens


def ekfac_flops(model: nn.Module, groups, n_train: int, n_query: int, seq_len: int,
                estimator: str = "ekfac") -> dict[str, float]:
    """The unavoidable matmul FLOPs of ``estimator`` (``ekfac``, ``kfac`` or ``grad_dot``) by part.

    ``groups``: the shared-input groups of tracked modules
    (:func:`layerif_core.estimators.factors.module_groups`)."""
    train_tokens, query_tokens = n_train * seq_len, n_query * seq_len
    mods = [(tm, g.d_in) for g in groups for tm in g.modules]
    grad_size = sum(tm.d_out * d for tm, d in mods)
    fit_passes = {"ekfac": 2, "kfac": 1, "grad_dot": 0}[estimator]
    out = {
        "passes": (fit_passes + 1) * pass_flops(model, n_train, seq_len)
        + pass_flops(model, n_query, seq_len),
        "query_and_score": 2.0 * grad_size * (train_tokens + query_tokens),
    }
    if estimator in ("ekfac", "kfac"):
        sq = sum(g.d_in**2 for g in groups) + sum(tm.d_out**2 for tm, _ in mods)
        out["covariances"] = 2.0 * sq * train_tokens
        out["precondition"] = sum(4.0 * (tm.d_out**2 * d + tm.d_out * d**2) for tm, d in mods)
    if estimator == "ekfac":
        out["correction"] = 2.0 * sq * train_tokens + 2.0 * grad_size * seq_len * n_train
    out["total"] = sum(out.values())
    return out


# --- costs of stages and the devices they run on --------------------------------------------------

DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}


@dataclass
class Cost:
    """What one stage costs. ``flops``: matmul FLOPs in the model's dtype, by part; ``flops_fp32``:
    float32 work whatever the model's dtype (accumulators, SVDs); ``eigh``: eigendecomposition
    FLOPs (``9 n³`` each, float64); ``bytes_read``: memory traffic of bandwidth-bound steps;
    ``peak_bytes``: accelerator memory at the stage's peak; ``fixed_seconds``: time that does not
    depend on the device (reading weights from disk); ``note``: what the estimate assumed."""

    flops: dict[str, float] = field(default_factory=dict)
    flops_fp32: float = 0.0
    eigh: float = 0.0
    bytes_read: float = 0.0
    peak_bytes: float = 0.0
    fixed_seconds: float = 0.0
    note: str = ""

    def __add__(self, other: Cost) -> Cost:
        parts = dict(self.flops)
        for k, v in other.flops.items():
            parts[k] = parts.get(k, 0.0) + v
        notes = "; ".join(n for n in (self.note, other.note) if n)
        return Cost(parts, self.flops_fp32 + other.flops_fp32, self.eigh + other.eigh,
                    self.bytes_read + other.bytes_read, max(self.peak_bytes, other.peak_bytes),
                    self.fixed_seconds + other.fixed_seconds, notes)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values()) + self.flops_fp32 + self.eigh

    def seconds(self, device: Device, dtype: torch.dtype) -> float:
        """Predicted seconds of the stage on ``device`` with the model in ``dtype``."""
        compute = sum(self.flops.values()) / device.rate(dtype) + self.flops_fp32 / device.rate(torch.float32)
        return (compute + self.eigh / device.eigh_rate + self.bytes_read / device.bandwidth
                + self.fixed_seconds)


@dataclass
class Device:
    """One row of the device table: matmul throughput by dtype (FLOP/s), the share of it that a
    model's passes reach, memory, bandwidth and where the numbers come from."""

    name: str
    memory_bytes: float
    bandwidth: float  # bytes/s
    matmul: dict[str, float]  # dtype name -> FLOP/s
    efficiency: float
    eigh_rate: float  # FLOP/s of float64 eigendecompositions (9 n³ per matrix)
    source: str

    def rate(self, dtype: torch.dtype) -> float:
        name = str(dtype).removeprefix("torch.")
        found = self.matmul.get(name) or self.matmul["float32"]
        return found * self.efficiency


DEVICES_FILE = Path(__file__).with_name("devices.json")


def device_table() -> dict[str, dict]:
    """The rows of ``devices.json``."""
    return json.loads(DEVICES_FILE.read_text())


def load_device(name: str) -> Device:
    """The device ``name`` from the table (case-insensitive), or ``cpu``: this machine, measured now
    (a second of matmuls per dtype)."""
    if name.lower() == "cpu":
        return measure_cpu()
    table = device_table()
    key = next((k for k in table if k.lower() == name.lower()), None)
    if key is None:
        raise ConfigError(f"device '{name}' is not in the device table{closest(name, list(table))}; "
                          f"use one of {', '.join(table)} or cpu.")
    row = table[key]
    return Device(key, row["memory_gb"] * 1e9, row["bandwidth_gbs"] * 1e9,
                  {k: v * 1e12 for k, v in row["matmul_tflops"].items()}, row["efficiency"],
                  row["eigh_tflops"] * 1e12, row["source"])


CPU_EFFICIENCY = 0.5  # share of 1024² matmul throughput a SmolLM2 pass reaches (benchmarks/bench_plan.py)


def measure_cpu() -> Device:
    """This machine's CPU, measured: matmul throughput per dtype and the eigendecomposition rate."""
    cpu = torch.device("cpu")
    matmul = {str(dt).removeprefix("torch."): matmul_flops_per_second(cpu, dt, 512, seconds=0.5)
              for dt in (torch.float32, torch.bfloat16)}
    n = 512
    x = torch.randn(n, n, dtype=torch.float64)
    x = x @ x.T
    start = time.perf_counter()
    torch.linalg.eigh(x)
    eigh_rate = 9 * n**3 / (time.perf_counter() - start)
    import os

    import psutil

    source = "measured on this machine"
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load >= 0.5 * cores:  # other work shares the cores: the measurement is that share
        source += (f" while it was busy (load {load:.1f} on {cores} cores): the times are those of"
                   " the share it had, longer than on an idle machine")
    return Device(f"cpu ({torch.get_num_threads()} threads)", psutil.virtual_memory().total, 20e9,
                  matmul, CPU_EFFICIENCY, eigh_rate, source)


def weights_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the model's parameters in ``dtype`` (tied weights once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total * DTYPE_BYTES[dtype]


def model_dims(model: nn.Module) -> tuple[int, int, int, int]:
    """``(layers, hidden, intermediate, vocab)`` from the model's config."""
    cfg = model.config
    layers, _ = attention_width(model)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    return layers, hidden, inter, getattr(cfg, "vocab_size", 0)


def activation_bytes(model: nn.Module, batch: int, seq: int, dtype: torch.dtype, backward: bool) -> int:
    """Activations of one batch: with a backward pass, what every block keeps for it (about
    ``8 h + 3 i`` values per token: the inputs of the projections and norms, the MLP's gate, up and
    activation; attention through SDPA keeps no ``T × T`` matrix) plus float32 logits and their
    gradient; without, one block's working set plus the logits."""
    layers, hidden, inter, vocab = model_dims(model)
    tokens = batch * seq
    per_block = (8 * hidden + 3 * inter) * tokens * DTYPE_BYTES[dtype]
    logits = tokens * vocab * 4 * (2 if backward else 1)
    return (layers if backward else 1) * per_block + logits


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
