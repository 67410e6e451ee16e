"""Reading a transformers model's text config: layers, heads, context length (one reader for all)."""

from __future__ import annotations

from typing import Any


def text_config(model: Any) -> Any:
    """The config of the language model itself (the text part of a multimodal config)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_int(model: Any, *names: str) -> int | None:
    """The first of ``names`` in the text config that holds a positive integer, else None."""
    config = text_config(model)
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
