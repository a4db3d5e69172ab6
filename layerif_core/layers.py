"""The layer map: which modules form decoder layer l, for any decoder-only transformers model.

The decoder blocks are found structurally (the ``nn.ModuleList`` whose length is the config's number
of layers and whose items share one class), so Llama, Mistral, Gemma, Qwen2, GPT-2, GPT-NeoX, OPT
and most other decoders work without a per-architecture table. A block's linear modules are its
``nn.Linear`` and GPT-2's ``Conv1D``; a module is "attention" when its path in the block contains
``attn``/``attention``, else "mlp".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from layerif_core.config import LayerSpec
from layerif_core.errors import ConfigError, ModelError


@dataclass
class TrackedModule:
    """One tracked linear map ``y = W a (+ b)`` of a layer.

    ``d_in``/``d_out`` are the sizes of the input ``a`` and output ``y``; the weight gradient of one
    token is ``δ aᵀ`` (``[d_out, d_in]``) whatever the storage layout (``Conv1D`` stores ``Wᵀ``).
    """

    name: str  # full name in the model
    short: str  # name relative to the block
    layer: int
    module: nn.Module
    d_in: int
    d_out: int
    has_bias: bool
    transposed: bool  # weight stored as [d_in, d_out] (GPT-2 Conv1D)

    @property
    def kind(self) -> str:
        s = self.short.lower()
        return "attention" if ("attn" in s or "attention" in s) else "mlp"

    def weight_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (the weight or its gradient) as ``[d_out, d_in]``."""
        return w.t() if self.transposed else w

    def grad_matrix(self) -> torch.Tensor:
        """The accumulated ``.grad`` as ``[d_out, d_in (+1 for the bias)]``, float32."""
        g = self.weight_matrix(self.module.weight.grad).float()
        if self.has_bias:
            g = torch.cat([g, self.module.bias.grad.float()[:, None]], dim=1)
        return g


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if _is_conv1d(module):
        d_in, d_out = module.weight.shape
        return d_in, d_out, True
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ``ModuleList`` of the decoder blocks of ``model``."""
    cfg = getattr(model, "config", None)
    n_layers = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n_layers = getattr(cfg, key, None) or n_layers
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            kinds = {type(m) for m in mod}
            if len(kinds) == 1 and any(_linear_shape(s) for s in mod[0].modules()):
                candidates.append((name, mod))
    if n_layers is not None:
        exact = [c for c in candidates if len(c[1]) == n_layers]
        candidates = exact or candidates
    if not candidates:
        raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}; it has no "
                         "ModuleList of identical blocks with linear layers.")
    return max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))


class LayerMap:
    """Layer index ``l`` ↦ the tracked modules of decoder block ``l``."""

    def __init__(self, model: nn.Module, spec: LayerSpec | None = None):
        spec = spec or LayerSpec()
        self.model = model
        self.blocks_name, self.blocks = find_blocks(model)
        pattern = re.compile(spec.regex) if spec.regex else None
        self.layers: list[list[TrackedModule]] = []
        for idx, block in enumerate(self.blocks):
            tracked = []
            for short, mod in block.named_modules():
                shape = _linear_shape(mod)
                if shape is None or not short or _is_lora_part(short) != spec.lora_only:
                    continue
                d_in, d_out, transposed = shape
                tm = TrackedModule(f"{self.blocks_name}.{idx}.{short}",
                                   _lora_name(short) if spec.lora_only else _base_name(short), idx, mod,
                                   d_in, d_out, getattr(mod, "bias", None) is not None, transposed)
                if spec.modules != "all" and tm.kind != spec.modules:
                    continue
                if pattern is not None and not pattern.search(tm.short):
                    continue
                tracked.append(tm)
            self.layers.append(tracked)
        if spec.lora_only and not any(self.layers) and not any(
                _is_lora_part(n) for n, _ in model.named_modules()):
            raise ConfigError(f"layers.lora_only is set but {type(model).__name__} has no LoRA modules; "
                              "fine-tune an adapter first (`layerif finetune CONFIG`) and load it with "
                              "model.adapter=<its directory>.")
        if not any(self.layers):
            raise ConfigError(f"the layer selection (modules={spec.modules!r}, regex={spec.regex!r}) "
                              f"matches no linear module of {type(model).__name__}; widen it.")

    def __len__(self) -> int:
        return len(self.layers)

    def modules(self) -> list[TrackedModule]:
        """Every tracked module, layer by layer."""
        return [m for layer in self.layers for m in layer]

    def num_params(self) -> list[int]:
        """Tracked parameters per layer (weights and biases)."""
        return [sum(m.d_out * (m.d_in + int(m.has_bias)) for m in layer) for layer in self.layers]

    def describe(self) -> list[list[str]]:
        return [[m.short for m in layer] for layer in self.layers]


def _is_lora_part(short: str) -> bool:
    return any(p in short.split(".") for p in ("lora_A", "lora_B", "lora_embedding_A",
                                                "lora_embedding_B", "lora_moe"))


def _lora_name(short: str) -> str:
    """``self_attn.q_proj.lora_A.default`` -> ``self_attn.q_proj.lora_A`` (other adapter names kept)."""
    parts = short.replace(".base_layer", "").split(".")
    if len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B") and parts[-1] == "default":
        parts = parts[:-1]
    return ".".join(parts)


def _base_name(short: str) -> str:
    return short.replace(".base_layer", "")
