"""Streaming capture: an attention implementation registered with transformers.

``register()`` adds ``"attnrhythm"`` to transformers' ``AttentionInterface`` (and the SDPA mask
builder under the same name to ``AttentionMaskInterface``). The function computes the layer's
output with the model's own SDPA path, unchanged; while a :class:`Capture` is active, it also
hands the post-RoPE query and key of the analysed layers to :func:`stats.tile_reductions`.
Outside a capture it is exactly SDPA, so a model can keep this implementation for generation
and training.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import AttnRhythmError
from .stats import Band, LayerReductions, tile_reductions

IMPLEMENTATION = "attnrhythm"

_ACTIVE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("attnrhythm_capture", default=None)


@dataclass
class Capture:
    """What to reduce during one forward pass, and where the results go.

    Attributes:
        layers: indices (``module.layer_idx``) of the analysed layers.
        window: W of WAAD.
        bands: column-reduction horizons (lo, hi), hi None for "to the end".
        row_weight: (B, N) weight of each query row in the column reductions.
        tile_size: query rows per tile (None: automatic, a 16 MiB score block).
        blocks: optional per-sequence (start, end) padded ranges whose square map block is kept.
        results: filled during the forward pass, layer index -> reductions.
    """

    layers: list[int]
    window: int
    bands: list[Band]
    row_weight: torch.Tensor
    tile_size: int | None = None
    blocks: list[tuple[int, int] | None] | None = None
    results: dict[int, LayerReductions] = field(default_factory=dict)

    def consume(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        softcap: float | None,
    ) -> None:
        layer = getattr(module, "layer_idx", None)
        if layer is None or layer not in self.layers:
            return
        with torch.no_grad():
            self.results[layer] = tile_reductions(
                query,
                key,
                attention_mask,
                scaling=scaling,
                window=self.window,
                bands=self.bands,
                row_weight=self.row_weight,
                tile_size=self.tile_size,
                softcap=softcap,
                blocks=self.blocks,
            )


def attnrhythm_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that, inside an active :class:`Capture`, also reduces the analysed layers."""
    capture = _ACTIVE.get()
    if capture is not None:
        if kwargs.get("s_aux") is not None:
            raise AttnRhythmError(
                "this model uses attention sinks, which attnrhythm does not capture yet: "
                "pick a model without sinks"
            )
        capture.consume(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def register() -> None:
    """Register the ``attnrhythm`` attention and mask implementations (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, attnrhythm_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def use_streaming_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` to the streaming implementation (plain SDPA when nothing is captured)."""
    register()
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, KeyError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AttnRhythmError(
            f"{type(model).__name__} does not use transformers' attention interface ({first}): "
            "attnrhythm needs a decoder whose attention goes through AttentionInterface"
        ) from err
    return model


def num_layers(model: PreTrainedModel) -> int:
    """Number of decoder layers of ``model``."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise AttnRhythmError(f"cannot tell how many layers {type(model).__name__} has: pass --layers explicitly")


@contextmanager
def capturing(capture: Capture) -> Iterator[Capture]:
    """Activate ``capture`` for the forward passes run inside the block."""
    token = _ACTIVE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE.reset(token)
