"""Attention near the diagonal: scores of a narrow band, scanned in blocks of query rows.

For one sequence and one layer, ``scan_band`` visits the band ``0 <= t - s < width`` of the
score matrix (query t, key s), a block of rows at a time: rows [t0, t1) meet keys
[t0 - width + 1, t1), a (rows x (rows + width - 1)) block, so no (rows x N) block exists and
memory stays O(N x (width + head_dim)) per head. With each row's log-sum-exp ``lse`` (from a
fused attention kernel, or from the band itself when the band holds every key a row may
see, as in a sliding-window layer), A[t, s] = exp(score - lse_t) and the scan returns, per row,

* ``mass[t]    = sum_{j<width} A[t, t-j]``
* ``moment[t]  = sum_{j<width} j A[t, t-j]``
* ``capped[t]  = sum_{j<width} min(j, W) A[t, t-j]``

and, per finite band (lo, hi) with hi < width, the weighted column sums
``cols[s] = sum_t w[t] A[t, s] [lo <= t - s <= hi]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_BUDGET_BYTES = 8 * 2**20


@dataclass
class BandScan:
    """Row and finite-band column sums of one sequence, each (H, L) float32."""

    lse: torch.Tensor
    mass: torch.Tensor
    moment: torch.Tensor
    capped: torch.Tensor
    cols: dict[tuple[int, int], torch.Tensor]


def band_rows(heads: int, width: int, budget_bytes: int = BLOCK_BUDGET_BYTES) -> int:
    """Query rows per block so that one (heads, rows, rows + width - 1) fp32 block fits the budget."""
    rows = budget_bytes // max(1, heads * 4 * (width + 256))
    return int(max(16, min(256, rows)))


def scan_band(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float,
    width: int,
    window: int,
    row_weight: torch.Tensor,
    bands: list[tuple[int, int]],
    lse: torch.Tensor | None = None,
    reach: int | None = None,
    rows_per_block: int | None = None,
) -> BandScan:
    """Scan the band 0 <= t - s < width of one causal sequence.

    Args:
        query: (H, L, D) float32 post-RoPE queries of one sequence (no padding inside).
        key: (Hkv, L, D) float32 keys; H a multiple of Hkv.
        scale: softmax scale.
        width: band width (1 <= width <= L); keys further back than width - 1 are not visited.
        window: W of WAAD (for ``capped``).
        row_weight: (L,) weights of the query rows in the column sums.
        bands: finite (lo, hi) column bands, hi < width.
        lse: (H, L) log-sum-exp of every row over all its keys; None computes it from the band,
            which is exact only when the band holds every key a row attends (sliding windows).
        reach: a sliding window: keys with t - s >= reach are masked (None: no window).
        rows_per_block: query rows per block (default: an 8 MiB block).
    """
    n_heads, length, dim = query.shape
    n_kv = key.shape[0]
    group = n_heads // n_kv
    device = query.device
    rows = rows_per_block or band_rows(n_heads, width)
    pad = torch.zeros(n_kv, width - 1, dim, device=device, dtype=key.dtype)
    keys = torch.cat([pad, key], 1)  # index m <-> key s = m - (width - 1)
    weight = row_weight.float()
    out_lse = lse if lse is not None else torch.empty(n_heads, length, device=device)
    mass = torch.empty(n_heads, length, device=device)
    moment = torch.empty(n_heads, length, device=device)
    capped = torch.empty(n_heads, length, device=device)
    cols = {band: torch.zeros(n_heads, length, device=device) for band in bands}
    for t0 in range(0, length, rows):
        t1 = min(length, t0 + rows)
        r = t1 - t0
        span = r + width - 1
        q = query[:, t0:t1].reshape(n_kv, group * r, dim)
        scores = torch.matmul(q, keys[:, t0 : t0 + span].transpose(1, 2)).view(n_heads, r, span)
        scores.mul_(scale)
        # gap[i, m] = t - s for row t = t0 + i and key s = t0 - width + 1 + m
        rows_idx = torch.arange(r, device=device)[:, None]
        gap = rows_idx + (width - 1) - torch.arange(span, device=device)[None, :]
        first = max(0, width - 1 - t0)  # keys before the start of the sequence are padding
        valid = (gap >= 0) & (gap < min(width, reach or width))
        if first:
            valid[:, :first] = False
        scores.masked_fill_(~valid, float("-inf"))
        if lse is None:
            out_lse[:, t0:t1] = torch.logsumexp(scores, -1)
        probs = scores.sub_(out_lse[:, t0:t1, None]).exp_()  # exp(-inf) = 0 outside the band
        gap_f = gap.clamp_min(0).float()
        mass[:, t0:t1] = probs.sum(-1)
        moment[:, t0:t1] = (probs * gap_f).sum(-1)
        capped[:, t0:t1] = (probs * gap_f.clamp_max(window)).sum(-1)
        for lo, hi in cols:
            inside = ((gap >= lo) & (gap <= hi)).float() * weight[t0:t1, None]
            col = torch.einsum("hrm,rm->hm", probs, inside)
            cols[(lo, hi)][:, t0 - width + 1 + first : t1] += col[:, first:]
    return BandScan(lse=out_lse, mass=mass, moment=moment, capped=capped, cols=cols)
