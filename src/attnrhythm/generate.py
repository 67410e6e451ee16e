"""Tokenising prompt/response pairs (chat template aware) and sampling responses."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from attnrhythm.analyze import TraceInput
from attnrhythm.errors import AttnRhythmError
from attnrhythm.padding import left_pad


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool = True) -> list[int]:
    """Token ids of the prompt: the chat template with a generation prompt when ``chat`` and the
    tokenizer has one, else the plain text (with the tokenizer's BOS if it adds one)."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]
    return [int(i) for i in ids]


def response_ids(tokenizer: Any, response: str) -> list[int]:
    """Token ids of the response text, without special tokens."""
    return [int(i) for i in tokenizer(response, add_special_tokens=False)["input_ids"]]


def make_trace(
    tokenizer: Any, prompt: str, response: str, *, chat: bool = True, meta: dict | None = None
) -> TraceInput:
    """A :class:`TraceInput` from text."""
    p = prompt_ids(tokenizer, prompt, chat=chat)
    r = response_ids(tokenizer, response)
    if not r:
        raise AttnRhythmError("the response is empty: give a response with at least 2 tokens")
    return TraceInput(p + r, len(p), dict(meta or {}))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    seed: int = 0,
) -> list[list[int]]:
    """Sample one response per prompt (token ids, stopping at EOS; EOS not included).

    ``temperature`` 0 means greedy decoding. Prompts are left-padded into one batch.
    """
    if max_new_tokens < 1:
        raise AttnRhythmError(f"bad --max-new-tokens {max_new_tokens}: it must be >= 1")
    if temperature < 0:
        raise AttnRhythmError(f"bad --temperature {temperature}: it must be >= 0")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask, _ = left_pad(prompts, pad_id)
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {
        "do_sample": temperature > 0,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id,
    }
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    stops = _stop_ids(model, tokenizer)
    responses = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = len(row)
        for i, tok in enumerate(row):
            if tok in stops:
                cut = i
                break
        responses.append(row[:cut])
    return responses


def _stop_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    stops: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            stops.add(value)
        elif isinstance(value, list):
            stops.update(v for v in value if isinstance(v, int))
    return stops
