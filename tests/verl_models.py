"""The tiny model verl's tests load: a random Llama with a word-level tokenizer and a chat template."""

from __future__ import annotations

from pathlib import Path

# verl's dataset and agent loop format prompts with the tokenizer's chat template
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def tiny_model(path: Path) -> Path:
    """A tiny random Llama with a word-level tokenizer (verl's model config loads both)."""
    from tiny_llama import tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{f"w{i}": i for i in range(1, 97)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="w1", bos_token="w2"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_llama(0, pad_token_id=0, eos_token_id=1, bos_token_id=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
