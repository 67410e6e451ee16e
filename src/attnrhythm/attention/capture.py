"""Streaming capture: an attention implementation registered with transformers.

``register()`` adds ``"attnrhythm"`` to transformers' ``AttentionInterface`` (and the SDPA mask
builder under the same name to ``AttentionMaskInterface``). Outside a capture, and for layers a
capture does not analyse, the function is exactly transformers' SDPA path, so a model can keep
this implementation for generation and training. For an analysed layer inside a
:class:`Capture` it picks a route (recorded in ``Capture.routes``):

* ``"fused"``: causal attention within one run of live tokens per sequence (padding on either
  side): the layer's output, each row's log-sum-exp and the distance moment come from one fused
  kernel call per sequence, the statistics from a narrow band of scores and one reverse fused
  pass (:mod:`fused`, :mod:`bands`);
* ``"band"``: the same layout with a sliding window shorter than a sequence: every statistic
  comes from the band of the window's width; the output from SDPA;
* ``"tile"``: anything else (soft-capping, dropout, biases, packed or per-head masks, negative
  row weights, weight on padding rows): SDPA's output and :func:`stats.tile_reductions`.

``Capture.route`` forces a route: ``"auto"`` (default), ``"fused"`` (fused or band, an error
where neither applies) or ``"tile"``; the environment variable ``ATTNRHYTHM_ROUTE`` sets the
default.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from attnrhythm.attention import fused
from attnrhythm.attention.model_config import config_int
from attnrhythm.attention.reductions import Band, LayerReductions, tile_reductions
from attnrhythm.attention.routes import ROUTES
from attnrhythm.errors import AttnRhythmError

IMPLEMENTATION = "attnrhythm"

_ACTIVE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("attnrhythm_capture", default=None)


def default_route() -> str:
    """The route from ``ATTNRHYTHM_ROUTE`` (auto when unset)."""
    return os.environ.get("ATTNRHYTHM_ROUTE", "auto")


@dataclass
class Capture:
    """What to reduce during one forward pass, and where the results go.

    Attributes:
        layers: indices (``module.layer_idx``) of the analysed layers.
        window: W of WAAD.
        bands: column-reduction horizons (lo, hi), hi None for "to the end".
        row_weight: (B, N) weight of each query row in the column reductions.
        tile_size: query rows per tile of the tile route (None: automatic, a 16 MiB score block).
        blocks: optional per-sequence (start, end) padded ranges whose square map block is kept.
        route: "auto", "fused" (an error where the fused/band routes cannot express the mask)
            or "tile"; default from ``ATTNRHYTHM_ROUTE``, else "auto".
        sinks: optional (B, N) bool, the sink key positions (the fused/band routes take them when
            they are the first tokens of each sequence's live run): every layer then also reduces
            each row's sink mass (``LayerReductions.sink``).
        exclude_sinks: compute every statistic from the attention renormalised without the sink
            keys (see :mod:`attnrhythm.attention.reductions`).
        own_output: whether the fused route may return its kernel's output for the layer (no-grad
            forwards in fp32/bf16/fp16: saves the SDPA call). False keeps every layer output SDPA's,
            bit for bit the forward without the capture (a loss forward).
        results: filled during the forward pass, layer index -> reductions.
        routes: filled during the forward pass, layer index -> the route taken.
    """

    layers: list[int]
    window: int
    bands: list[Band]
    row_weight: torch.Tensor
    tile_size: int | None = None
    blocks: list[tuple[int, int] | None] | None = None
    route: str = field(default_factory=default_route)
    sinks: torch.Tensor | None = None
    exclude_sinks: bool = False
    own_output: bool = True
    results: dict[int, LayerReductions] = field(default_factory=dict)
    routes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise AttnRhythmError(f"unknown attention route {self.route!r}: use one of {', '.join(ROUTES)}")
        if self.exclude_sinks and self.sinks is None:
            raise AttnRhythmError("excluding sinks needs the sink positions: give Capture(sinks=...)")

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        scaling: float | None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """The layer's output; the analysed layers' reductions are stored in ``results``."""
        layer = getattr(module, "layer_idx", None)
        if layer is None or layer not in self.layers:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        layout, why = self._layout(module, query, key, attention_mask, dropout, kwargs)
        if layout is None or self.route == "tile":
            if self.route == "fused":
                raise AttnRhythmError(f"layer {layer} cannot take the fused route ({why}): use route 'auto'")
            self.routes[layer] = "tile"
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
                    softcap=kwargs.get("softcap"),
                    blocks=self.blocks,
                    sinks=self.sinks,
                    exclude_sinks=self.exclude_sinks,
                )
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        banded = layout.window is not None and any(e - s > layout.window for s, e in layout.segments)
        self.routes[layer] = "band" if banded else "fused"
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        own_output = (
            self.own_output and not banded and not needs_grad and query.dtype in fused.OWN_OUTPUT_DTYPES
        )
        with torch.no_grad():
            reductions, output = fused.layer_reductions(
                query,
                key,
                value if own_output else None,
                layout,
                scaling=scaling,
                window=self.window,
                bands=self.bands,
                row_weight=self.row_weight,
                blocks=self.blocks,
                sinks=None if self.sinks is None else fused.sink_prefixes(self.sinks, layout),
                exclude_sinks=self.exclude_sinks,
            )
        self.results[layer] = reductions
        if output is None:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        _fill_padding_rows(output, module, query, key, value, attention_mask, layout, scaling)
        return output, None

    def _layout(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        kwargs: dict,
    ) -> tuple[fused.MaskLayout | None, str]:
        """The mask layout for the fused/band routes, or (None, why not)."""
        if kwargs.get("softcap"):
            return None, "soft-capped scores"
        if dropout:
            return None, "attention dropout"
        if kwargs.get("position_bias") is not None:
            return None, "a position bias"
        if kwargs.get("is_causal") is False or not getattr(module, "is_causal", True):
            return None, "non-causal attention"
        bsz, _, length, _ = query.shape
        if key.shape[2] != length:
            return None, "queries and keys of different lengths"
        weight = self.row_weight
        if weight.shape != (bsz, length):
            return None, "row weights of another shape than the batch"
        if torch.any(weight < 0):
            return None, "negative row weights"
        layout = fused.detect_layout(attention_mask, bsz, length)
        if layout is None:
            return None, "a mask other than causal attention within one run of live tokens"
        for b, (start, end) in enumerate(layout.segments):
            if torch.any(weight[b, :start] != 0) or torch.any(weight[b, end:] != 0):
                return None, "row weight on padding rows"
        if self.sinks is not None and fused.sink_prefixes(self.sinks, layout) is None:
            return None, "sink positions other than the first tokens of each sequence"
        return layout, ""


def _fill_padding_rows(
    output: torch.Tensor,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layout: fused.MaskLayout,
    scaling: float | None,
) -> None:
    """SDPA's output for the rows outside each sequence's live tokens, with the model's own mask rows."""
    if attention_mask is None:
        return
    length = query.shape[2]
    for b, (start, end) in enumerate(layout.segments):
        rows = [r for r in (slice(0, start), slice(end, length)) if r.stop > r.start]
        mask_b = attention_mask[min(b, attention_mask.shape[0] - 1)][None]
        for r in rows:
            out, _ = sdpa_attention_forward(
                module,
                query[b : b + 1, :, r],
                key[b : b + 1],
                value[b : b + 1],
                mask_b[:, :, r],
                scaling=scaling,
            )
            output[b, r] = out[0]


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
    if capture is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("s_aux") is not None:
        raise AttnRhythmError(
            "this model uses attention sinks, which attnrhythm does not capture yet: "
            "pick a model without sinks"
        )
    return capture.attend(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


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
    value = config_int(model, "num_hidden_layers", "n_layer", "num_layers")
    if value is not None:
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
