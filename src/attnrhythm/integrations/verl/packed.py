"""A capture for verl's packed forward (``use_remove_padding=true``): all sequences in one row.

With remove-padding verl's engine runs the actor on ``input_ids`` of shape (1, total) holding
every sequence of a micro-batch back to back, ``position_ids`` restarting at each sequence and no
attention mask; transformers turns that into a block-diagonal causal mask. The statistics of one
sequence must not mix with its neighbours' (a head's span is a mean over that sequence's response
rows), so :class:`PackedCapture` reduces each analysed layer on the sequences laid out one per row
(right-padded, the grid its ``row_weight`` describes) and leaves the layer's output to SDPA on the
packed inputs, exactly as the forward computes it without a capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from attnrhythm.attention.capture import Capture


def packed_starts(position_ids: torch.Tensor) -> list[int]:
    """Start of every packed sequence in a (1, total) ``position_ids`` row, plus the end.

    A sequence starts wherever a position is not its predecessor's + 1 (transformers reads
    packed sequences the same way).
    """
    row = position_ids.reshape(-1)
    breaks = torch.nonzero(row[1:] != row[:-1] + 1).flatten() + 1
    return [0, *breaks.tolist(), int(row.numel())]


def unpack(packed: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """(1, H, total, D) packed states -> (S, H, max length, D), one sequence per row, right-padded."""
    lengths = [e - s for s, e in zip(offsets, offsets[1:])]
    out = packed.new_zeros(len(lengths), packed.shape[1], max(lengths), packed.shape[3])
    for i, (start, end) in enumerate(zip(offsets, offsets[1:])):
        out[i, :, : end - start] = packed[0, :, start:end]
    return out


def unpacked_mask(mask: torch.Tensor | None, offsets: list[int]) -> torch.Tensor:
    """(S, 1, M, M) bool mask of the unpacked grid: each sequence's own block of the packed mask.

    ``mask`` is the packed forward's 4D mask (None: plain causal). Rows past a sequence's end
    (padding) attend to its first token only, so no row is fully masked.
    """
    lengths = [e - s for s, e in zip(offsets, offsets[1:])]
    width = max(lengths)
    device = mask.device if mask is not None else None
    out = torch.zeros(len(lengths), 1, width, width, dtype=torch.bool, device=device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    for i, (start, end) in enumerate(zip(offsets, offsets[1:])):
        n = end - start
        if mask is None:
            block = causal[:n, :n]
        else:
            block = mask[0, 0, start:end, start:end]
            block = block if block.dtype == torch.bool else block == 0
        out[i, 0, :n, :n] = block
        out[i, 0, n:, 0] = True
    return out


@dataclass
class PackedCapture(Capture):
    """A :class:`Capture` whose ``row_weight`` (S, M) is on the unpacked grid of a packed forward.

    ``offsets`` are the packed sequences' boundaries (:func:`packed_starts`); positions after the
    last one (a static pad) are not analysed.
    """

    offsets: list[int] = field(default_factory=list)

    @classmethod
    def around(cls, capture: Capture, offsets: list[int]) -> PackedCapture:
        """``capture`` (built for the unpacked grid) as a capture of the packed forward."""
        return cls(**{f.name: getattr(capture, f.name) for f in fields(Capture)}, offsets=offsets)

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
        if getattr(module, "layer_idx", None) in self.layers:
            grid = [unpack(t, self.offsets) for t in (query, key, value)]
            mask = unpacked_mask(attention_mask, self.offsets)
            super().attend(module, *grid, mask, dropout, scaling, **kwargs)  # the reductions only
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
