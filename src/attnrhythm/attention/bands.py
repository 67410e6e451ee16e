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

``skip`` masks the keys s < skip (the sinks, excluded): with the log-sum-exp of each row over its
other keys, the scan then sums the renormalised map A'. A row with no key left (t < skip) gets
``lse = NO_KEYS`` when the scan computes it, and zero sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_BUDGET_BYTES = 8 * 2**20
SUBNORMAL_LOG = -87.0  # exp() of anything lower is a subnormal float32 (< 1.2e-38)
NO_KEYS = 1e30  # log-sum-exp of a row with no key: exp(score - NO_KEYS) is exactly 0


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
    return int(max(16, min(64, rows)))


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
    skip: int = 0,
) -> BandScan:
    """Scan the band 0 <= t - s < width of one causal sequence.

    Args:
        query: (H, L, D) post-RoPE queries of one sequence (no padding inside), any float dtype:
            the scores are computed in float32.
        key: (Hkv, L, D) keys; H a multiple of Hkv.
        scale: softmax scale.
        width: band width (1 <= width <= L); keys further back than width - 1 are not visited.
        window: W of WAAD (for ``capped``).
        row_weight: (L,) weights of the query rows in the column sums.
        bands: finite (lo, hi) column bands, hi < width.
        lse: (H, L) log-sum-exp of every row over all its keys; None computes it from the band,
            which is exact only when the band holds every key a row attends (sliding windows).
        reach: a sliding window: keys with t - s >= reach are masked (None: no window).
        rows_per_block: query rows per block (default: an 8 MiB block).
        skip: keys s < skip are masked (excluded sinks); ``lse`` must then be over the other keys.
    """
    n_heads, length, dim = query.shape
    n_kv = key.shape[0]
    group = n_heads // n_kv
    device = query.device
    rows = rows_per_block or band_rows(n_heads, width)
    pad = torch.zeros(n_kv, width - 1, dim, device=device)
    keys = torch.cat([pad, key.float()], 1)  # index m <-> key s = m - (width - 1)
    weight = row_weight.float()
    out_lse = lse if lse is not None else torch.empty(n_heads, length, device=device)
    sums = torch.empty(n_heads, length, 3, device=device)  # mass, moment, capped
    cols = {band: torch.zeros(n_heads, length, device=device) for band in bands}
    # the band is held reversed: column c <-> gap j = t - s = width - 1 - c
    gap = torch.arange(width - 1, -1, -1, device=device)
    gap_f = gap.float()
    reducers = torch.stack([torch.ones_like(gap_f), gap_f, gap_f.clamp_max(window)], -1)  # (width, 3)
    out_of_reach = gap >= (reach or width)
    in_band = {band: ((gap >= band[0]) & (gap <= band[1])).float() for band in cols}
    grid = None
    for t0 in range(0, length, rows):
        t1 = min(length, t0 + rows)
        r = t1 - t0
        span = r + width - 1
        q = query[:, t0:t1].float().reshape(n_kv, group * r, dim)
        block = torch.matmul(q, keys[:, t0 : t0 + span].transpose(1, 2)).view(n_heads, r, span)
        # band[h, i, c] = block[h, i, i + c]: row t = t0 + i, key s = t0 + i - (width - 1) + c
        band = block.as_strided((n_heads, r, width), (r * span, span + 1, 1)) * scale
        masked = out_of_reach[None, :].expand(r, width)
        if t0 < width - 1 + skip:  # keys before the start of the sequence, or excluded
            t_idx = torch.arange(t0, t1, device=device)[:, None]
            masked = masked | (gap[None, :] > t_idx - skip)
        band.masked_fill_(masked, float("-inf"))
        if lse is None:
            found = torch.logsumexp(band, -1)
            out_lse[:, t0:t1] = found.masked_fill_(found == float("-inf"), NO_KEYS)  # rows t < skip
        band.sub_(out_lse[:, t0:t1, None])
        # below exp(-87) fp32 turns subnormal, which is many times slower on a CPU: those are 0
        probs = band.masked_fill_(band < SUBNORMAL_LOG, float("-inf")).exp_()  # 0 outside the band
        sums[:, t0:t1] = torch.matmul(probs, reducers)
        if in_band:
            # column s gathers row t's entry at gap t - s: lay the weighted band back on the block
            # grid (entries off the band stay zero from one block to the next) and sum over rows
            if grid is None or grid.shape[1] != r:
                grid = block.new_zeros(n_heads, r, span)
            on_band = grid.as_strided((n_heads, r, width), (r * span, span + 1, 1))
            first = max(0, width - 1 - t0)
            for (lo, hi), inside in in_band.items():
                torch.mul(probs, weight[t0:t1, None] * inside[None, :], out=on_band)
                cols[(lo, hi)][:, t0 - width + 1 + first : t1] += grid[:, :, first:].sum(1)
    return BandScan(lse=out_lse, mass=sums[..., 0], moment=sums[..., 1], capped=sums[..., 2], cols=cols)
