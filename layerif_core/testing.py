"""Tiny real models for tests and for the plugin conformance suite (``layerif plugins check``):
random-init causal LMs built from transformers config classes and a character-level tokenizer made
in memory. No network, no files."""

from __future__ import annotations

import string

import torch

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


def save_tiny_model(path, arch: str = "llama", seed: int = 0, **overrides):
    """Save a tiny random-init model of ``arch`` and the character tokenizer to ``path`` (a model
    directory any config can name as ``model.source``); returns ``path``."""
    tiny_model(arch, seed=seed, **overrides).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
