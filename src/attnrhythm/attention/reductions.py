"""Per-head attention reductions computed in query tiles, never from a full N x N map.

Every attention metric of docs/method.md is linear in the attention map A of one head, so it is
enough to keep, per head, a few length-N vectors:

* ``dist[t]  = sum_s A[t,s] * (t - s)``          (row reduction; its mean over the response is
  the head's span d[l,h])
* ``waad[t]  = sum_s A[t,s] * min(t - s, W)``    (row reduction; WAAD before head averaging)
* ``cols[s]  = sum_t w[t] * A[t,s] * [lo <= t - s <= hi]``  (band-limited column reduction with
  row weights w; FAI and receiver-head scores before normalisation)
* ``sink[t]  = sum_{s in S} A[t,s]``             (row reduction: the mass a row gives to the sink
  keys S, when sink keys are given)

**Sinks.** With sink keys S (a (B, N) bool mask of key positions, e.g. each sequence's first
token) and ``exclude_sinks``, ``dist``, ``waad`` and ``cols`` are computed from the renormalised
map ``A'[t,s] = A[t,s] / (1 - sink[t])`` for s not in S and 0 on S, i.e. the softmax over the
keys the row sees outside S. A row that sees no key outside S (the first tokens themselves, or a
padding row) has ``A' = 0``: it adds nothing to any reduction. ``sink`` is always the mass under
the original A.

Column reductions are kept for the columns at or after a sequence's first weighted row (the
response, in an analysis) and are 0 before it: every consumer reads columns of weighted tokens
only (FAI and receiver scores are defined on the response), and the fused route then never
visits keys of the prompt in its reverse pass. :func:`leading_columns` gives that first row.

``tile_reductions`` computes them from the post-RoPE query and key of one layer, a tile of
query rows at a time: the only quadratic object is one (B, H, tile, N) block of scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Band = tuple[int, "int | None"]


@dataclass
class LayerReductions:
    """Reductions of one layer, in padded coordinates.

    Attributes:
        dist: (B, H, N) float32 ``dist[t]`` per row, or None where only its total is known (the
            fused route with kernels in bf16/fp16).
        waad: (B, H, N) float32.
        cols: band -> (B, H, N) float32.
        span: (B, H) float64 ``sum_t w[t] dist[t]``, the row-weighted total of ``dist`` (with w = 1
            on the response: the head's span d[l,h] times the response length).
        blocks: per sequence, the (H, S, S) map block, if asked.
        sink: (B, H, N) float32 ``sink[t]`` (the original map's mass on the sink keys), or None
            when no sink keys were given.
    """

    dist: torch.Tensor | None
    waad: torch.Tensor
    cols: dict[Band, torch.Tensor]
    span: torch.Tensor
    blocks: list[torch.Tensor | None] | None = None
    sink: torch.Tensor | None = None


def weighted_span(dist: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """``sum_t w[t] dist[t]`` in float64: (B, H) from dist (B, H, N) and row weights (B, N)."""
    return (dist.double() * row_weight.double().to(dist.device)[:, None, :]).sum(-1)


def leading_columns(row_weight: torch.Tensor) -> list[int]:
    """Per sequence of ``row_weight`` (B, N): the first row with positive weight (N if none).

    Column reductions are 0 before it (see the module docstring).
    """
    weighted = row_weight > 0
    first = torch.where(weighted.any(-1), weighted.float().argmax(-1), row_weight.shape[-1])
    return [int(x) for x in first.tolist()]


def drop_leading_columns(cols: dict[Band, torch.Tensor], row_weight: torch.Tensor) -> None:
    """Zero, in place, the columns of every (B, H, N) reduction before each sequence's first weighted row."""
    for b, first in enumerate(leading_columns(row_weight)):
        for values in cols.values():
            values[b, :, :first] = 0.0


def default_tile_size(batch: int, heads: int, length: int, budget_bytes: int = 16 * 2**20) -> int:
    """Largest tile (query rows) whose fp32 score block fits ``budget_bytes``; at least 16 rows."""
    per_row = max(1, batch * heads * length * 4)
    tile = budget_bytes // per_row
    return int(max(16, min(length, tile)))


def _tile_mask(
    attention_mask: torch.Tensor | None, t0: int, t1: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The mask block for query rows [t0, t1) and keys [0, t1).

    Returns (mask_block, causal) where mask_block is the model's own mask sliced (bool: True
    means attend; float: additive) or None, and causal is the (T, t1) causal pattern.
    """
    rows = torch.arange(t0, t1, device=device)
    keys = torch.arange(0, t1, device=device)
    causal = keys[None, :] <= rows[:, None]
    if attention_mask is None:
        return None, causal
    block = attention_mask[..., t0:t1, :t1]
    return block, causal


def tile_reductions(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None,
    window: int,
    bands: list[Band],
    row_weight: torch.Tensor,
    tile_size: int | None = None,
    softcap: float | None = None,
    blocks: list[tuple[int, int] | None] | None = None,
    sinks: torch.Tensor | None = None,
    exclude_sinks: bool = False,
) -> LayerReductions:
    """Compute row and band-column reductions of softmax(q k^T) for every query head.

    Args:
        query: (B, H, N, D) post-RoPE queries.
        key: (B, Hkv, N, D) post-RoPE keys; H must be a multiple of Hkv (GQA).
        attention_mask: None for a plain causal mask, or the model's 4D mask (B or 1, 1 or H,
            N, N) as bool (True = attend) or additive float. It already holds padding and
            sliding windows; the causal pattern is applied on top in any case.
        scaling: softmax scale (default 1/sqrt(D)).
        window: W of WAAD.
        bands: list of (lo, hi) horizons for column reductions; hi None means "to the end".
        row_weight: (B, N) weights of query rows in the column reductions (1 for response
            tokens, 0 elsewhere); columns before a sequence's first weighted row are 0.
        tile_size: query rows per tile (default: a 16 MiB score block).
        softcap: tanh soft-capping of scores (Gemma-2 style), if the model uses it.
        blocks: optional per-sequence (start, end) ranges in padded coordinates: the square
            map block A[start:end, start:end] of every head is kept (for plots of a window).
        sinks: optional (B, N) bool, the sink key positions: ``sink`` is reduced, and with
            ``exclude_sinks`` every other reduction (and the kept blocks) uses the renormalised
            map A' (see the module docstring).
    """
    bsz, n_heads, n, dim = query.shape
    if exclude_sinks and sinks is None:
        raise ValueError("exclude_sinks needs the sink key positions")
    n_kv = key.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key heads")
    group = n_heads // n_kv
    scale = float(scaling) if scaling is not None else dim**-0.5
    device = query.device
    q_all = query.detach().float()
    k_all = key.detach().float()
    w_all = row_weight.detach().float().to(device)
    tile = tile_size or default_tile_size(bsz, n_heads, n)

    dist = torch.zeros(bsz, n_heads, n, device=device)
    waad = torch.zeros(bsz, n_heads, n, device=device)
    cols = {band: torch.zeros(bsz, n_heads, n, device=device) for band in bands}
    sink_keys = None if sinks is None else sinks.to(device=device, dtype=torch.bool)
    sink = None if sink_keys is None else torch.zeros(bsz, n_heads, n, device=device)
    offsets = torch.arange(window, device=device)  # j = t - s for the near band of WAAD
    kept: list[torch.Tensor | None] = [None] * bsz
    for b, span in enumerate(blocks or []):
        if span is not None:
            kept[b] = torch.zeros(n_heads, span[1] - span[0], span[1] - span[0], device=device)

    for t0 in range(0, n, tile):
        t1 = min(n, t0 + tile)
        rows = t1 - t0
        q = q_all[:, :, t0:t1].reshape(bsz, n_kv, group * rows, dim)
        k = k_all[:, :, :t1]
        scores = torch.matmul(q, k.transpose(-1, -2)).view(bsz, n_heads, rows, t1)
        scores.mul_(scale)
        if softcap:
            scores.div_(softcap).tanh_().mul_(softcap)
        block, causal = _tile_mask(attention_mask, t0, t1, device)
        if block is not None:
            if block.dtype == torch.bool:
                scores.masked_fill_(~block, float("-inf"))
            else:
                scores.add_(block.float())
        scores.masked_fill_(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs.nan_to_num_(0.0)  # rows with every key masked (padding queries)
        if sink_keys is not None:
            on_sink = sink_keys[:, None, None, :t1]
            sink[:, :, t0:t1] = (probs * on_sink).sum(-1)
            if exclude_sinks:  # A': the softmax over the seen keys outside S (no such key: 0)
                hidden = on_sink
                if block is not None and block.dtype != torch.bool:  # additive masks block with ~min
                    hidden = hidden | (block < torch.finfo(block.dtype).min / 2)
                probs = torch.softmax(scores.masked_fill_(hidden, float("-inf")), dim=-1).nan_to_num_(0.0)
        del scores

        row_sum = probs.sum(-1)  # 1 for live rows, 0 for fully masked ones
        rel_rows = torch.arange(rows, device=device, dtype=torch.float32)
        # sum_s P[t,s](t-s) = (t-t0) * rowsum - sum_s P[t,s](s-t0): small magnitudes near t0.
        rel_keys = torch.arange(t1, device=device, dtype=torch.float32) - t0
        # one pass over the block for both key reductions: sum_s P(s-t0), and WAAD's far mass below
        far_end = max(0, t0 - window + 1)  # keys [0, far_end) are >= W back from every row here
        key_vecs = torch.stack([rel_keys, (torch.arange(t1, device=device) < far_end).float()], -1)
        key_sums = torch.matmul(probs, key_vecs)  # (B, H, T, 2)
        dist[:, :, t0:t1] = rel_rows * row_sum - key_sums[..., 0]

        # WAAD = sum_{j<W} j P[t,t-j] + W sum_{s<=t-W} P[t,s]: two sums of non-negative terms, so
        # the fp32 error stays relative to WAAD (W * rowsum - ... lost ~W * 1e-7 to cancellation).
        t_idx = torch.arange(t0, t1, device=device)
        near = t_idx[:, None] - offsets[None, :]  # (T, W) key index s = t - j
        valid = near >= 0
        gathered = probs.gather(-1, near.clamp_min(0).expand(bsz, n_heads, rows, window))
        near_w = offsets.float()[None, :] * valid
        far = key_sums[..., 1]
        strip_end = max(far_end, t1 - window)  # keys [far_end, strip_end): far from some rows
        if strip_end > far_end:
            far_keys = torch.arange(far_end, strip_end, device=device)
            inside = (far_keys[None, :] <= t_idx[:, None] - window).float()  # (T, S)
            far = far + (probs[..., far_end:strip_end] * inside).sum(-1)
        waad[:, :, t0:t1] = (gathered * near_w).sum(-1) + window * far

        w = w_all[:, t0:t1]  # (B, T)
        for band in bands:
            cols[band][:, :, :t1] += _band_columns(probs, w, t0, t1, band)
        for b, span in enumerate(blocks or []):
            if span is None:
                continue
            a, e = span
            lo_row, hi_row = max(a, t0), min(e, t1)
            if lo_row < hi_row:
                key_end = min(e, t1)
                kept[b][:, lo_row - a : hi_row - a, : key_end - a] = probs[
                    b, :, lo_row - t0 : hi_row - t0, a:key_end
                ]
    drop_leading_columns(cols, w_all)
    return LayerReductions(
        dist=dist,
        waad=waad,
        cols=cols,
        span=weighted_span(dist, w_all),
        blocks=kept if blocks else None,
        sink=sink,
    )


def _band_columns(probs: torch.Tensor, w: torch.Tensor, t0: int, t1: int, band: Band) -> torch.Tensor:
    """sum_t w[t] P[t,s] [lo <= t-s <= hi] over this tile's rows, for keys [0, t1): (B, H, t1)."""
    lo, hi = band
    bsz, n_heads, rows, keys = probs.shape
    out = probs.new_zeros(bsz, n_heads, keys)
    if hi is None:
        # All columns at distance >= lo: the full weighted column sum minus the near strip.
        out += torch.matmul(w[:, None, None, :], probs)[:, :, 0]
        if lo > 0:
            ks, part = _strip(probs, w, t0, t1, 0, lo - 1)
            out[:, :, ks : ks + part.shape[-1]] -= part
    else:
        ks, part = _strip(probs, w, t0, t1, lo, hi)
        out[:, :, ks : ks + part.shape[-1]] += part
    return out


def _strip(
    probs: torch.Tensor, w: torch.Tensor, t0: int, t1: int, lo: int, hi: int
) -> tuple[int, torch.Tensor]:
    """Weighted column sums over the finite band lo <= t-s <= hi; returns (first key, sums)."""
    keys = probs.shape[-1]
    ks = max(0, t0 - hi)
    ke = min(keys, max(ks, t1 - lo))
    if ke <= ks:
        return ks, probs.new_zeros(probs.shape[0], probs.shape[1], 0)
    device = probs.device
    t_idx = torch.arange(t0, t1, device=device)[:, None]
    s_idx = torch.arange(ks, ke, device=device)[None, :]
    gap = t_idx - s_idx
    inside = ((gap >= lo) & (gap <= hi)).float()  # (T, S)
    weight = w[:, None, :, None] * inside  # (B, 1, T, S)
    return ks, (probs[..., ks:ke] * weight).sum(-2)
