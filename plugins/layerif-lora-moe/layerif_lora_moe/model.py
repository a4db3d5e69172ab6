"""Wiring LoRA-MoE into a model: peft injects LoRA on the target modules, then modules of layers with
more than one expert get the mixture (:mod:`layerif_lora_moe.layer`). Save and load as safetensors
plus a JSON config; nothing is pickled."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn

from layerif_core.artifacts import atomic_path
from layerif_core.errors import ArtifactError, ConfigError, DataError
from layerif_core.layers import LayerMap
from layerif_lora_moe.layer import MoeExperts, attach_experts

log = logging.getLogger("layerif")

ADAPTER = "default"
CONFIG_FILE = "lora_moe_config.json"
WEIGHTS_FILE = "lora_moe.safetensors"


@dataclass
class MoeSpec:
    """Everything needed to rebuild the adapter's structure on the base model."""

    rank: int
    alpha: float
    dropout: float
    experts: list[int]  # per layer
    top_k: list[int]  # per layer, after capping
    targets: list[str]  # full module names
    target_layers: list[int]  # layer of each target
    num_layers: int
    format: str = "layerif-lora-moe/1"


def select_targets(layer_map: LayerMap, patterns: list[str]) -> tuple[list[str], list[int]]:
    """Full names and layers of the modules whose in-block path equals or ends with a pattern."""
    names, layers = [], []
    for tm in layer_map.modules():
        if any(tm.short == p or tm.short.endswith("." + p) for p in patterns):
            names.append(tm.name)
            layers.append(tm.layer)
    if not names:
        shorts = sorted({tm.short for tm in layer_map.modules()})
        raise ConfigError(f"target_modules {patterns} match no linear module of the decoder blocks; "
                          f"the modules are: {', '.join(shorts)}.")
    return names, layers


def cap_top_k(experts: list[int], top_k: int) -> list[int]:
    """``min(top_k, n_l)`` per layer; a warning names the routed layers capped (n_l = 1 is plain LoRA)."""
    capped = [min(top_k, n) for n in experts]
    plain = sum(1 for n in experts if n == 1)
    if plain and top_k > 1:
        log.info("%d layer(s) with one expert: plain LoRA there (top_k 1)", plain)
    low = [i for i, n in enumerate(experts) if 1 < n < top_k]
    if low:
        log.warning("top_k %d capped to the expert count in %d layer(s): %s", top_k, len(low),
                    ", ".join(f"{i} (n={experts[i]})" for i in low))
    return capped


class LoraMoeModel:
    """A handle on a model with LoRA-MoE injected: trainable parameters, aux loss, usage, saving."""

    def __init__(self, model: nn.Module, spec: MoeSpec):
        self.model = model
        self.spec = spec
        self.modules: list[tuple[int, str, nn.Module]] = []
        named = dict(model.named_modules())
        for name, layer in zip(spec.targets, spec.target_layers, strict=True):
            self.modules.append((layer, name, named[name]))

    def routed(self) -> list[tuple[int, str, MoeExperts]]:
        """(layer, name, experts) of every module with a router."""
        return [(layer, name, m.lora_moe[ADAPTER]) for layer, name, m in self.modules
                if hasattr(m, "lora_moe") and ADAPTER in m.lora_moe]

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def aux_loss(self) -> torch.Tensor:
        """Sum of the load-balancing losses of the last forward over the routed modules."""
        total = None
        for _, _, moe in self.routed():
            if moe.aux is not None:
                total = moe.aux if total is None else total + moe.aux
        return total if total is not None else torch.zeros(())

    def record_usage(self, on: bool) -> None:
        for _, _, moe in self.routed():
            moe.record = on

    def take_usage(self) -> dict[int, list[float]]:
        """Fraction of top-k assignments per expert, per layer (summed over its modules); resets."""
        per_layer: dict[int, torch.Tensor] = {}
        for layer, _, moe in self.routed():
            per_layer[layer] = per_layer.get(layer, 0) + moe.counts.cpu()
            moe.counts = torch.zeros_like(moe.counts)
        return {layer: (c / c.sum()).tolist() if float(c.sum()) > 0 else c.tolist()
                for layer, c in sorted(per_layer.items())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.trainable().items()}

    def save(self, directory: str | Path) -> Path:
        """Write ``lora_moe.safetensors`` (experts, routers) and ``lora_moe_config.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(self.state_dict(), str(tmp), metadata={"format": self.spec.format})
        with atomic_path(directory / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(asdict(self.spec), indent=2) + "\n")
        return directory


def inject_lora_moe(model: nn.Module, layer_map: LayerMap, experts: list[int], rank: int = 8,
                    alpha: float = 16.0, dropout: float = 0.0, target_modules: list[str] | None = None,
                    top_k: int | list[int] = 2, targets: list[str] | None = None) -> LoraMoeModel:
    """Inject LoRA (peft) on the target modules and experts + routers where ``n_l > 1``, in place.

    Only the experts and routers are trainable afterwards; the base weights are frozen. ``top_k`` is
    capped per layer at its expert count (a list gives it per layer, already capped).
    """
    from layerif_lora_moe.config import DEFAULT_TARGETS

    if len(experts) != len(layer_map):
        raise DataError(f"the allocation has {len(experts)} layers but the model has {len(layer_map)}; "
                        "compute the scores and allocation on this model.")
    if min(experts) < 1:
        raise ConfigError(f"every layer needs at least one expert; got {experts}.")
    if targets is None:
        names, layers = select_targets(layer_map, target_modules or DEFAULT_TARGETS)
    else:
        by_name = {tm.name: tm.layer for tm in layer_map.modules()}
        missing = [t for t in targets if t not in by_name]
        if missing:
            raise ArtifactError(f"adapter targets {missing[:3]} are not modules of this model; load "
                                "the adapter onto the base model it was trained on.")
        names, layers = list(targets), [by_name[t] for t in targets]
    ks = list(top_k) if isinstance(top_k, list) else cap_top_k(experts, top_k)
    spec = MoeSpec(rank, float(alpha), float(dropout), list(experts), ks, names, layers, len(layer_map))
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    handle = LoraMoeModel(model, spec)
    for layer, _, module in handle.modules:
        if experts[layer] > 1:
            attach_experts(module, ADAPTER, experts[layer], spec.top_k[layer])
    for p in model.parameters():
        p.requires_grad_(False)
    for _, _, module in handle.modules:
        for sub in (module.lora_A[ADAPTER], module.lora_B[ADAPTER], getattr(module, "lora_moe", None)):
            if sub is not None:
                for p in sub.parameters():
                    p.requires_grad_(True)
    return handle


def load_lora_moe(model: nn.Module, directory: str | Path, layer_map: LayerMap | None = None
                  ) -> LoraMoeModel:
    """Rebuild the adapter saved in ``directory`` on the base ``model`` and load its weights."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ArtifactError(f"'{directory}' holds no LoRA-MoE adapter ({CONFIG_FILE} and "
                            f"{WEIGHTS_FILE}); point to the run's lora_moe/adapter directory.")
    raw = json.loads(cfg_path.read_text())
    spec = MoeSpec(**raw)
    layer_map = layer_map or LayerMap(model)
    if spec.num_layers != len(layer_map):
        raise ArtifactError(f"the adapter was trained on a model with {spec.num_layers} layers, this "
                            f"one has {len(layer_map)}; load it onto its own base model.")
    handle = inject_lora_moe(model, layer_map, spec.experts, spec.rank, spec.alpha, spec.dropout,
                             top_k=list(spec.top_k), targets=spec.targets)
    weights = load_file(str(w_path))
    expected = set(handle.trainable())
    if set(weights) != expected:
        extra = sorted(set(weights) - expected)[:2] or sorted(expected - set(weights))[:2]
        raise ArtifactError(f"'{w_path}' does not fit this model (e.g. {extra}); load it onto the base "
                            "model it was trained on.")
    device = next(model.parameters()).device
    params = handle.trainable()
    with torch.no_grad():
        for name, t in weights.items():
            if params[name].shape != t.shape:
                raise ArtifactError(f"'{w_path}': {name} has shape {tuple(t.shape)}, the model "
                                    f"expects {tuple(params[name].shape)}; wrong base model.")
            params[name].copy_(t.to(device))
    model.eval()
    return handle
