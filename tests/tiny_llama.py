"""The tiny random Llama several tests analyse: 3 layers, hidden 32, 4 query and 2 key heads."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, **overrides):
    """A tiny random ``LlamaForCausalLM`` (vocabulary 97, context 256) in eval mode, seeded.

    Config fields in ``overrides`` replace the defaults (e.g. ``tie_word_embeddings``, token ids).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()
