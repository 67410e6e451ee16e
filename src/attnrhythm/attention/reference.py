"""The dense float64 reference of the per-head reductions (tests and ``benchmarks/gpu_check.py``).

Full softmax maps of one layer's post-RoPE query and key in float64: quadratic in memory, for
checking the fast routes (:mod:`attnrhythm.attention.reductions`, :mod:`attnrhythm.attention.fused`)
on short sequences only.
"""

from __future__ import annotations

import torch

from attnrhythm.attention.reductions import Band, LayerReductions, weighted_span


def dense_reductions(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scaling: float | None,
    window: int,
    bands: list[Band],
    row_weight: torch.Tensor,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    exclude_sinks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[Band, torch.Tensor]]:
    """(dist, waad, cols) of :class:`LayerReductions` from full float64 softmax maps.

    ``exclude_sinks``: from the renormalised map A'[t,s] = A[t,s] / (1 - sum_{sinks} A[t,.]) off the
    sink keys ``sinks`` (B, N) bool and 0 on them; rows that see no key outside the sinks give 0.

    ``query`` (B, H, N, D), ``key`` (B, Hkv, N, D) (GQA: key heads repeated), ``mask`` a boolean
    (True = attend) or additive mask broadcastable to (B, H, N, N), or None. Fully masked rows
    give 0; columns before a sequence's first weighted row are 0 (the reductions' contract).
    """
    scores = dense_scores(query, key, mask, scaling=scaling, softcap=softcap)
    n = scores.shape[-1]
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    if exclude_sinks:
        on_sink = sinks.to(probs.device)[:, None, None, :]
        rest = (probs * ~on_sink).sum(-1, keepdim=True)  # 1 - sink mass, without the cancellation
        blind = (scores < torch.finfo(torch.float32).min / 2).all(-1, keepdim=True)  # sees no key
        probs = torch.where(on_sink | (rest <= 0) | blind, 0.0, probs / rest.clamp_min(1e-300))
    del scores
    t = torch.arange(n, device=probs.device)
    gap = (t[:, None] - t[None, :]).double()
    dist = (probs * gap.clamp_min(0)).sum(-1)
    waad = (probs * gap.clamp(0, window)).sum(-1)
    weight = row_weight.double().to(probs.device)
    cols = {}
    for lo, hi in bands:
        inside = (gap >= lo) & ((gap <= hi) if hi is not None else torch.ones_like(gap, dtype=torch.bool))
        cols[(lo, hi)] = (probs * inside * weight[:, None, :, None]).sum(-2)
    for b in range(probs.shape[0]):
        weighted = torch.nonzero(weight[b] > 0).flatten()
        first = int(weighted[0]) if weighted.numel() else n
        for values in cols.values():
            values[b, :, :first] = 0.0
    return dist, waad, cols


def dense_scores(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, *, scaling: float | None, softcap=None
) -> torch.Tensor:
    """float64 causal scores (B, H, N, N) with the mask applied (-inf where a key is not seen)."""
    q = query.double()
    k = key.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    n = q.shape[2]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    scores = q @ k.transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.double()
    t = torch.arange(n, device=q.device)
    return scores.masked_fill(t[:, None] < t[None, :], float("-inf"))


def dense_sink_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    sinks: torch.Tensor,
    *,
    scaling,
    softcap=None,
) -> torch.Tensor:
    """Each row's float64 softmax mass on the sink keys ``sinks`` (B, N) bool: (B, H, N)."""
    probs = torch.softmax(dense_scores(query, key, mask, scaling=scaling, softcap=softcap), -1).nan_to_num(
        0.0
    )
    return (probs * sinks.to(probs.device)[:, None, None, :]).sum(-1)


def dense_layer_reductions(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scaling: float | None,
    window: int,
    bands: list[Band],
    row_weight: torch.Tensor,
) -> LayerReductions:
    """:func:`dense_reductions` as a :class:`LayerReductions` (float64), to stand in for a capture's."""
    dist, waad, cols = dense_reductions(
        query, key, mask, scaling=scaling, window=window, bands=bands, row_weight=row_weight
    )
    return LayerReductions(dist=dist, waad=waad, cols=cols, span=weighted_span(dist, row_weight))
