"""A model's shape without its weights: the architecture config of a model source, read offline,
and a model on the ``meta`` device built from it (every module and tensor shape, no memory).

Used where only shapes matter: the cost plan of a study (``layerif study --plan``) and the GPU
benchmark's random-init models (``benchmarks/bench_gpu.py``). Sources, in order:

1. a local model directory: its ``config.json``;
2. a hub name whose config is already in the local Hugging Face cache (nothing is downloaded);
3. the table below, for the models the paper and its peers use, copied from their published
   ``config.json`` files (hub names as keys; ``embedded:smollm2-135m`` is SmolLM2-135M-Instruct).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from layerif_core.errors import ModelError

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu"}
_QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu"}

KNOWN: dict[str, dict[str, Any]] = {
    "embedded:smollm2-135m": {**_LLAMA, "hidden_size": 576, "intermediate_size": 1536,
                              "num_hidden_layers": 30, "num_attention_heads": 9,
                              "num_key_value_heads": 3, "vocab_size": 49152,
                              "max_position_embeddings": 8192, "tie_word_embeddings": True,
                              "rope_theta": 100000.0},
    "HuggingFaceTB/SmolLM2-135M-Instruct": "embedded:smollm2-135m",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 5632,
                                           "num_hidden_layers": 22, "num_attention_heads": 32,
                                           "num_key_value_heads": 4, "vocab_size": 32000,
                                           "max_position_embeddings": 2048,
                                           "tie_word_embeddings": False},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                                  "hidden_act": "silu", "hidden_size": 4096,
                                  "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 32000, "max_position_embeddings": 32768,
                                  "sliding_window": 4096, "tie_word_embeddings": False},
    "google/gemma-7b": {"model_type": "gemma", "architectures": ["GemmaForCausalLM"],
                        "hidden_act": "gelu_pytorch_tanh", "hidden_size": 3072,
                        "intermediate_size": 24576,
                        "num_hidden_layers": 28, "num_attention_heads": 16,
                        "num_key_value_heads": 16, "head_dim": 256, "vocab_size": 256000,
                        "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "meta-llama/Llama-2-7b-hf": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32,
                                 "num_key_value_heads": 32, "vocab_size": 32000,
                                 "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336,
                                   "num_hidden_layers": 32, "num_attention_heads": 32,
                                   "num_key_value_heads": 8, "vocab_size": 128256,
                                   "max_position_embeddings": 8192, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-0.5B": {**_QWEN2, "hidden_size": 896, "intermediate_size": 4864,
                          "num_hidden_layers": 24, "num_attention_heads": 14,
                          "num_key_value_heads": 2, "vocab_size": 151936,
                          "max_position_embeddings": 32768, "tie_word_embeddings": True,
                          "rope_theta": 1000000.0},
    "Qwen/Qwen2.5-1.5B": {**_QWEN2, "hidden_size": 1536, "intermediate_size": 8960,
                          "num_hidden_layers": 28, "num_attention_heads": 12,
                          "num_key_value_heads": 2, "vocab_size": 151936,
                          "max_position_embeddings": 131072, "tie_word_embeddings": True,
                          "rope_theta": 1000000.0},
}


def known_config(source: str) -> dict[str, Any] | None:
    """The table's architecture config of ``source`` (aliases followed), or None."""
    found = KNOWN.get(source)
    while isinstance(found, str):
        found = KNOWN.get(found)
    return dict(found) if found is not None else None


def model_config(source: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of ``source`` without downloading anything (module docstring)."""
    from transformers import AutoConfig

    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    table = known_config(source)
    if table is not None:
        cls = type(AutoConfig.for_model(table["model_type"]))
        return cls.from_dict(table)
    if not source.startswith("embedded:") and not source.endswith(".gguf"):
        try:
            return AutoConfig.from_pretrained(source, local_files_only=True,
                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            pass
    known = ", ".join(k for k, v in KNOWN.items() if isinstance(v, dict))
    raise ModelError(f"the shape of model '{source}' is not known offline; point model.source at a "
                     f"local model directory (its config.json is enough), fetch its config into the "
                     f"Hugging Face cache, or use one of: {known}.")


def meta_model(config: Any, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM of ``config`` on the ``meta`` device: real module tree and shapes, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)

