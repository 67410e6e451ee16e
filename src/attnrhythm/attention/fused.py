"""Statistics from a fused attention kernel: its output, each row's log-sum-exp and one reverse pass.

The fused route of :mod:`capture`, for an analysed layer whose mask is causal attention within
one contiguous run of live tokens per sequence (left and/or right padding around it), with or
without a sliding window. Per sequence and per layer:

1. **Forward call.** One fused kernel call (CPU: ``aten._scaled_dot_product_flash_attention_for_cpu``;
   CUDA: ``aten._scaled_dot_product_efficient_attention``) over the live tokens, causal, gives the
   layer's output and each row's log-sum-exp ``lse_t``. One extra value column holding the key
   position s makes the same call return ``sum_s A[t,s] s``, hence ``dist[t] = t - sum_s A[t,s] s``.
   (q and k get a zero column so that the head sizes match; the scores do not change.)
2. **Band.** :func:`bands.scan_band` recomputes only the scores with ``t - s < width``
   (``width = max(W, hi + 1, ...)``, 51 by default) and turns them into probabilities with
   ``lse``: WAAD, finite-horizon FAI columns and the near part of ``dist``.
3. **Reverse pass.** Column sums to the end, ``C_lo[s] = sum_{t >= s + lo} w_t A[t, s]``, are the
   exponential of the log-sum-exp of one more fused call with keys as queries: the scores
   ``k_s . q_t * scale + log w_t - lse_t`` (the per-key bias is the CPU kernel's broadcast mask;
   on CUDA one extra head dimension: query' = [k_s, 1], key' = [q_t, (log w_t - lse_t) / scale]),
   both sequences reversed so that ``t >= s + lo`` is the kernel's top-left causal pattern once
   the first ``lo`` reversed queries are dropped. Only rows and columns from the sequence's first
   weighted row on take part (columns before it are 0 by the contract of :mod:`stats`), so the
   pass costs (response length)^2 / 2 scores, not N^2 / 2. Further open bands (lo' > lo)
   subtract a band strip.

A sliding-window layer whose window is shorter than the sequence needs no kernel at all for its
statistics: every key a row sees is inside the band of width ``window``, so the band scan
computes the log-sum-exp itself (``route = "band"``); its output comes from SDPA as usual.

Rows outside a sequence's live tokens (padding) get zero statistics and add nothing to the
column sums.

**Sinks** (the first ``n`` live tokens of each sequence, see :mod:`reductions`). Each row's sink
mass is ``sum_{s<n} exp(score[t,s] - lse_t)``, from the n sink scores of every row (a thin
(L x n) product). Excluding them (``exclude_sinks``) needs the log-sum-exp over the other keys,
``lse'_t``: one more fused call over the live tokens from n on (rows t >= n, keys n..t: the same
top-left causal pattern), which also returns ``sum_{s>=n} A'[t,s] s`` from the position column.
The band scan, the reverse pass and the map blocks then use ``lse'`` with the sink keys masked,
so every statistic is that of the renormalised map A'; rows t < n (only sinks to see) get
``lse' = NO_KEYS`` and zero statistics. On the band route the scan itself gives ``lse'`` (sink
keys masked), and the full ``lse`` is ``logaddexp(lse', sink lse)``.

**dtype.** The kernels run in the model's dtype. A bf16/fp16 model (the usual GPU case) gets its
output and float32 log-sum-exp from a kernel in that dtype (the kernels accumulate scores in
float32); the band scan computes its scores in float32 from the same q and k. A bf16 output
column would hold a position to 8 bits, so the head span comes from the column sums instead:
``sum_t w_t dist_t = sum_t w_t t - sum_s s C_0[s]``, with the reverse pass over every column
(``LayerReductions.dist`` is then None and ``span`` carries the total). Its error grows like
(float32 error of the log-sum-exp) x N: about 0.03 tokens at N = 32K for a kernel that keeps
scores in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnrhythm.attention.bands import NO_KEYS, scan_band
from attnrhythm.attention.reductions import (
    Band,
    LayerReductions,
    drop_leading_columns,
    leading_columns,
    weighted_span,
)

NO_WEIGHT = -1e30  # log-weight of rows with zero weight: exp() of it is exactly 0


@dataclass
class MaskLayout:
    """Live tokens [start, end) of every sequence, and the sliding window (None: full causal)."""

    segments: list[tuple[int, int]]
    window: int | None


def detect_layout(attention_mask: torch.Tensor | None, bsz: int, length: int) -> MaskLayout | None:
    """The layout of a causal mask made of padding and an optional sliding window, or None.

    ``attention_mask`` is the 4D mask transformers hands to the attention function (bool, True =
    attend, or additive float with 0 / very negative values), or None for plain causal. The
    structure is read from the diagonal and the last live row, then checked row block by row
    block (memory: a few MiB), so any other mask (packed sequences, per-head masks, biases)
    returns None and the caller falls back to the tile route.
    """
    if attention_mask is None:
        return MaskLayout(segments=[(0, length)] * bsz, window=None)
    mask = attention_mask
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (length, length):
        return None
    if mask.shape[0] not in (1, bsz):
        return None
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        return None
    segments: list[tuple[int, int]] = []
    window: int | None = None
    for b in range(bsz):
        m = mask[min(b, mask.shape[0] - 1), 0]
        live = torch.nonzero(_allowed(m.diagonal())).flatten()
        if live.numel() == 0:
            segments.append((0, 0))
            continue
        start, end = int(live[0]), int(live[-1]) + 1
        if live.numel() != end - start:
            return None
        last = torch.nonzero(_allowed(m[end - 1])).flatten()
        first_key = int(last[0]) if last.numel() else end
        seq_window = end - first_key if first_key > start else None
        if seq_window is not None:
            if window is not None and window != seq_window:
                return None
            window = seq_window
        segments.append((start, end))
    for b, (start, end) in enumerate(segments):
        m = mask[min(b, mask.shape[0] - 1), 0]
        if not _rows_match(m, start, end, window):
            return None
    return MaskLayout(segments=segments, window=window)


def _rows_match(mask: torch.Tensor, start: int, end: int, window: int | None) -> bool:
    """True when rows [start, end) of ``mask`` (N, N) are causal within [start, end) (+ window)."""
    length = mask.shape[-1]
    keys = torch.arange(length, device=mask.device)
    step = max(1, 2**22 // max(1, length))
    for r0 in range(start, end, step):
        r1 = min(end, r0 + step)
        rows = torch.arange(r0, r1, device=mask.device)[:, None]
        expected = (keys[None, :] >= start) & (keys[None, :] <= rows)
        if window is not None:
            expected &= keys[None, :] > rows - window
        got = mask[r0:r1]
        if got.dtype != torch.bool:
            blocked = got < torch.finfo(got.dtype).min / 2
            if not torch.all(blocked | (got == 0)):
                return False  # a float mask with biases: not a pure pattern
            got = ~blocked
        if not torch.equal(got, expected):
            return False
    return True


def _allowed(values: torch.Tensor) -> torch.Tensor:
    """Where a bool (True) or additive (0) mask lets a query attend."""
    return values if values.dtype == torch.bool else values == 0


def sink_prefixes(sinks: torch.Tensor, layout: MaskLayout) -> list[int] | None:
    """Per sequence, how many of its first live tokens are sinks, if ``sinks`` (B, N) bool is
    exactly such a prefix of every sequence's live tokens (and False elsewhere); else None."""
    counts = []
    for b, (start, end) in enumerate(layout.segments):
        row = sinks[b].bool()
        count = int(row[start:end].sum())
        if int(row.sum()) != count or not torch.all(row[start : start + count]):
            return None
        counts.append(count)
    return counts


def sink_lse(q: torch.Tensor, k: torch.Tensor, count: int, scale: float, reach: int | None) -> torch.Tensor:
    """Log-sum-exp of each row's scores on the sink keys s < count it sees: (H, L) float32 (-inf: none).

    q (H, L, D), k (Hkv, L, D) of one sequence's live tokens; ``reach`` a sliding window or None.
    """
    n_heads, length, _ = q.shape
    count = min(count, length)
    if count == 0:
        return torch.full((n_heads, length), float("-inf"), device=q.device)
    kk = k[:, :count].float().repeat_interleave(n_heads // k.shape[0], dim=0)
    scores = torch.matmul(q.float(), kk.transpose(1, 2)) * scale  # (H, L, count)
    t = torch.arange(length, device=q.device)[:, None]
    s = torch.arange(count, device=q.device)[None, :]
    allowed = s <= t
    if reach is not None:
        allowed &= t - s < reach
    return torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), -1)


# ---------------------------------------------------------------------------------------------
# the kernels


def causal_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (top-left) attention of (1, H, M, D) tensors: (output (1, H, M, Dv), lse (1, H, M) fp32).

    One fused kernel call; key and value may have fewer heads than query (GQA).
    """
    if query.device.type == "cuda":
        return _efficient_attention(query, key, value, scale)
    if key.shape[-1] != value.shape[-1] or query.shape[-1] != key.shape[-1]:
        raise ValueError("the CPU flash kernel needs one head size for query, key and value")
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, True, scale=scale
    )
    return out, lse


def _efficient_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA: the memory-efficient kernel (float32 capable; returns the log-sum-exp)."""
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    dim_v = value.shape[-1]
    query, key, value = _pad_dim(query, 8), _pad_dim(key, 8), _pad_dim(value, 8)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, None, True, 0.0, True, scale=scale
    )[:2]
    return out[..., :dim_v], lse[..., : query.shape[2]].float()


def _pad_dim(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = -x.shape[-1] % multiple
    if not extra:
        return x
    return torch.cat([x, x.new_zeros(*x.shape[:-1], extra)], -1)


def column_sums_to_end(
    query: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    row_weight: torch.Tensor,
    scale: float,
    lo: int,
    first: int = 0,
) -> torch.Tensor:
    """``C_lo[s] = sum_{t >= s + lo} w_t A[t, s]`` for one causal sequence, by one reverse fused call.

    Args:
        query: (H, L, D) float32; key: (Hkv, L, D) float32; lse: (H, L) row log-sum-exp;
        row_weight: (L,) non-negative weights; lo: the band's lower horizon (>= 0);
        first: columns before it are not computed (0), and rows before it must carry no weight:
            the reverse pass then visits the (L - first)^2 / 2 scores of rows and columns from
            ``first`` on only.
    Returns (H, L) float32.
    """
    n_heads, length, _ = query.shape
    out = torch.zeros(n_heads, length, device=query.device)
    span = length - first - lo
    if span <= 0:
        return out
    group = n_heads // key.shape[0]
    w = row_weight[first:].float()
    log_w = torch.where(w > 0, w.clamp_min(torch.finfo(torch.float32).tiny).log(), NO_WEIGHT)
    bias = log_w[None, :] - lse[:, first:]  # (H, L - first): added to the scaled scores
    # reversed order: reversed query' index i <-> key s = L-1-i; reversed key' index j <-> row t = L-1-j
    q_prime = key[:, first:].flip(1).repeat_interleave(group, dim=0)[:, lo:]
    k_prime = query[:, first:].flip(1)[:, :span]
    lse_rev = causal_lse_with_key_bias(q_prime, k_prime, bias.flip(1)[:, :span].contiguous(), scale)
    out[:, first : first + span] = lse_rev.flip(-1).exp()
    return out


def causal_lse_with_key_bias(
    query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """Row log-sum-exp of causal (top-left) scores ``q_i . k_j * scale + bias_j``: (H, M) float32.

    query, key: (H, M, D) in the kernel's dtype; bias: (H, M) float32, one additive term per key.
    The CPU flash kernel takes the bias as a float32 broadcast mask (1, H, 1, M); on CUDA it is
    folded into the head dimension (:func:`fold_key_bias`). The values are zeros: only the
    log-sum-exp is used.
    """
    n_heads, length, dim = query.shape
    if query.device.type == "cuda":
        q_aug, k_aug = fold_key_bias(query, key, bias, scale)
        _, lse = causal_attention_with_lse(q_aug[None], k_aug[None], torch.zeros_like(k_aug)[None], scale)
        return lse[0]
    values = query.new_zeros(1, n_heads, length, dim)
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query[None], key[None], values, 0.0, True, attn_mask=bias.float()[None, :, None, :], scale=scale
    )
    return lse[0]


def fold_key_bias(
    query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """query' = [q, 1, ...], key' = [k, parts of bias / scale]: ``q' . k' * scale = q . k * scale + bias``.

    In float32 one extra dimension holds ``bias / scale``. In bf16/fp16 the float32 value is split
    into three parts of that dtype (each the rounding of what the previous ones left), so a kernel
    that accumulates ``q' . k'`` in float32 (tensor cores do) recovers the bias to float32
    precision; one part would keep only 8 (bf16) or 11 (fp16) bits of ``lse_t``.
    """
    target = bias.float() / scale
    if query.dtype == torch.float32:
        parts = [target]
    else:
        parts, rest = [], target.clamp_min(-torch.finfo(query.dtype).max / 4)  # fp16: no -inf parts
        for _ in range(3):
            part = rest.to(query.dtype)
            parts.append(part)
            rest = rest - part.float()
    n_heads, length, _ = query.shape
    ones = query.new_ones(n_heads, length, len(parts))
    q_aug = torch.cat([query, ones], -1)
    k_aug = torch.cat([key, torch.stack([part.to(key.dtype) for part in parts], -1)], -1)
    return q_aug, k_aug


# ---------------------------------------------------------------------------------------------
# one layer


def band_width(length: int, window: int, bands: list[Band], sliding: int | None) -> int:
    """Width of the band scan: W, every finite hi + 1, every open lo beyond the smallest, the window."""
    need = window
    opens = sorted(lo for lo, hi in bands if hi is None)
    for _, hi in bands:
        if hi is not None:
            need = max(need, hi + 1)
    if opens:
        need = max(need, opens[-1])
    if sliding is not None:
        need = max(need, sliding)
    return int(max(1, min(length, need)))


LOW_PRECISION = (torch.bfloat16, torch.float16)
OWN_OUTPUT_DTYPES = (torch.float32, *LOW_PRECISION)  # the fused call gives the layer's output


def layer_reductions(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    layout: MaskLayout,
    *,
    scaling: float | None,
    window: int,
    bands: list[Band],
    row_weight: torch.Tensor,
    blocks: list[tuple[int, int] | None] | None = None,
    distance: str = "auto",
    sinks: list[int] | None = None,
    exclude_sinks: bool = False,
) -> tuple[LayerReductions, torch.Tensor | None]:
    """Reductions of one layer on the fused (or band) route, and the layer output if asked.

    The kernels run in the model's dtype: float32, or bf16/fp16 (the kernels accumulate in
    float32 and return a float32 log-sum-exp; the band scan computes its scores in float32).
    ``value`` given: the output (B, N, H, D) in the model's dtype comes from the same fused
    calls, padding rows excepted (the caller fills them). ``value`` None: statistics only.

    ``distance`` says where ``sum_s A[t,s] (t - s)`` comes from: ``"rows"`` (an extra value
    column of the forward call, per row: needs float32 outputs), ``"columns"`` (only the
    weighted total, ``sum_t w_t t - sum_s s C_0[s]`` from a reverse pass over every column: a
    bf16 output column would keep 8 bits of a position) or ``"auto"`` (rows in float32, columns
    in bf16/fp16).

    ``sinks``: per sequence, the number of its first live tokens that are sinks (see
    :func:`sink_prefixes`); the sink mass of every row is then reduced, and with
    ``exclude_sinks`` every statistic is that of the renormalised map (module docstring).
    """
    if exclude_sinks and sinks is None:
        raise ValueError("exclude_sinks needs the sink counts")
    bsz, n_heads, length, dim = query.shape
    scale = float(scaling) if scaling is not None else dim**-0.5
    device = query.device
    low = query.dtype in LOW_PRECISION
    if distance == "auto":
        distance = "columns" if low else "rows"
    if distance not in ("rows", "columns") or (low and distance == "rows"):
        raise ValueError(f"distance {distance!r}: use 'columns' or 'auto' ('rows' needs float32)")
    kernel_dtype = query.dtype if low else torch.float32
    dist = torch.zeros(bsz, n_heads, length, device=device)
    span = torch.zeros(bsz, n_heads, dtype=torch.float64, device=device)
    waad = torch.zeros(bsz, n_heads, length, device=device)
    cols = {band: torch.zeros(bsz, n_heads, length, device=device) for band in bands}
    kept: list[torch.Tensor | None] = [None] * bsz
    sink = None if sinks is None else torch.zeros(bsz, n_heads, length, device=device)
    output = None
    if value is not None:
        output = torch.zeros(bsz, length, n_heads, value.shape[-1], device=device, dtype=value.dtype)
    weights = row_weight.detach().float().to(device)
    rows_known = True
    for b, (start, end) in enumerate(layout.segments):
        if end <= start:
            continue
        q = query[b, :, start:end].detach().to(kernel_dtype).contiguous()
        k = key[b, :, start:end].detach().to(kernel_dtype).contiguous()
        v = None if value is None else value[b, :, start:end].detach()
        red, out = _sequence(
            q,
            k,
            v,
            layout.window,
            scale=scale,
            window=window,
            bands=bands,
            row_weight=weights[b, start:end],
            distance=distance,
            sinks=None if sinks is None else sinks[b],
            exclude_sinks=exclude_sinks,
        )
        if sink is not None:
            sink[b, :, start:end] = red["sink"]
        if red["dist"] is None:
            rows_known = False
        else:
            dist[b, :, start:end] = red["dist"]
        span[b] = red["span"]
        waad[b, :, start:end] = red["waad"]
        for band in bands:
            cols[band][b, :, start:end] = red["cols"][band]
        if out is not None:
            output[b, start:end] = out.transpose(0, 1)
        square = blocks[b] if blocks else None
        if square is not None:
            skip = sinks[b] if exclude_sinks else 0
            kept[b] = _map_block(q, k, red["lse"], scale, layout.window, start, square, skip=skip)
    drop_leading_columns(cols, weights)
    reductions = LayerReductions(
        dist=dist if rows_known else None,
        waad=waad,
        cols=cols,
        span=span,
        blocks=kept if blocks else None,
        sink=sink,
    )
    return reductions, output


def _sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    sliding: int | None,
    *,
    scale: float,
    window: int,
    bands: list[Band],
    row_weight: torch.Tensor,
    distance: str,
    sinks: int | None = None,
    exclude_sinks: bool = False,
) -> tuple[dict, torch.Tensor | None]:
    """Reductions of one sequence's live tokens; q (H, L, D), k/v (Hkv, L, D) in the kernel's dtype.

    ``sinks``: the first ``sinks`` tokens are sink keys (None: no sink mass); ``exclude_sinks``:
    the statistics of the renormalised map (module docstring).
    """
    n_heads, length, dim = q.shape
    positions = torch.arange(length, device=q.device, dtype=torch.float32)
    banded = sliding is not None and sliding < length
    width = band_width(length, window, bands, sliding if banded else None)
    finite = [(lo, hi) for lo, hi in bands if hi is not None]
    opens = sorted({lo for lo, hi in bands if hi is None})
    skip = min(sinks or 0, length) if exclude_sinks else 0  # keys s < skip are left out
    live = positions >= skip  # rows with a key to attend to
    out = None
    if banded:
        # every key a row sees lies in the band: the band gives the log-sum-exp and everything else
        strips = [(lo, width - 1) for lo in opens if lo < width and (lo, width - 1) not in finite]
        scan = scan_band(
            q,
            k,
            scale=scale,
            width=width,
            window=window,
            row_weight=row_weight,
            bands=finite + strips,
            reach=sliding,
            skip=skip,
        )
        dist = scan.moment
        waad = scan.capped
        cols = {band: scan.cols[band] for band in finite}
        for lo in opens:
            cols[(lo, None)] = scan.cols[(lo, width - 1)] if lo < width else torch.zeros_like(dist)
        span = weighted_span(dist[None], row_weight[None])[0]
        sink = None
        if sinks is not None:
            on_sinks = sink_lse(q, k, sinks, scale, sliding)
            full = scan.lse
            if skip:  # lse over every key = lse over the others (+) lse over the sinks
                full = torch.logaddexp(full.masked_fill(full >= NO_KEYS, float("-inf")), on_sinks)
            sink = (on_sinks - full).exp()
        return {"dist": dist, "span": span, "waad": waad, "cols": cols, "lse": scan.lse, "sink": sink}, None

    by_rows = distance == "rows"
    if by_rows:
        # one fused call: output (if v is given), lse and sum_s A[t,s] s from an extra value column
        zero_q = q.new_zeros(n_heads, length, 1)
        pos_col = positions[None, :, None].expand(k.shape[0], length, 1).to(q.dtype)
        if v is not None:
            q_aug = torch.cat([q.to(v.dtype), zero_q.to(v.dtype)], -1)
            k_aug = torch.cat([k.to(v.dtype), zero_q[: k.shape[0]].to(v.dtype)], -1)
            v_aug = torch.cat([v, pos_col.to(v.dtype)], -1)
            res, lse = causal_attention_with_lse(q_aug[None], k_aug[None], v_aug[None], scale)
            out = res[0, ..., :dim]
            mean_pos = res[0, ..., dim].float()
        elif skip:
            res, lse = causal_attention_with_lse(q[None], k[None], k[None], scale)  # only the lse
        else:
            v_pos = torch.cat([pos_col, k.new_zeros(k.shape[0], length, dim - 1)], -1)
            res, lse = causal_attention_with_lse(q[None], k[None], v_pos[None], scale)
            mean_pos = res[0, ..., 0].float()
    else:
        # one fused call for the output and lse; the distance comes from the column sums below
        values = k if v is None else v.to(q.dtype)  # without v only the lse is used
        res, lse = causal_attention_with_lse(q[None], k[None], values[None], scale)
        out = None if v is None else res[0].to(v.dtype)
    lse = lse[0].float()
    sink = None if sinks is None else (sink_lse(q, k, sinks, scale, None) - lse).exp()
    if skip:
        # the log-sum-exp over the keys after the sinks (and their mean position): one more call
        lse, rest_pos = _rest_of_row(q, k, skip, scale, positions if by_rows else None)
        if by_rows:
            mean_pos = rest_pos
    # open bands come from one reverse pass from ``base`` on, minus band strips [base, lo - 1]
    base = (opens[0] if opens else None) if by_rows else 0
    strips = [] if base is None else [(base, lo - 1) for lo in opens if lo - 1 >= base]
    strips = [band for band in strips if band not in finite]
    scan = scan_band(
        q,
        k,
        scale=scale,
        width=width,
        window=window,
        row_weight=row_weight,
        bands=finite + strips,
        lse=lse,
        skip=skip,
    )
    inside = positions < width  # rows whose every key lies in the band
    beyond = torch.where(inside | ~live, 0.0, (1.0 - scan.mass).clamp_min(0.0))  # mass further back
    waad = scan.capped + window * beyond
    cols = {band: scan.cols[band] for band in finite}
    dist = None
    if base is not None:
        # columns before the first weighted row stay 0, unless the distance needs all of them
        first = leading_columns(row_weight[None])[0] if by_rows else 0
        sums = column_sums_to_end(q, k, lse, row_weight, scale, base, first=first)
        sums[:, :skip] = 0.0  # excluded sink columns
        for lo in opens:
            cols[(lo, None)] = sums - scan.cols[(base, lo - 1)] if lo > base else sums
    if by_rows:
        dist = torch.where(inside, scan.moment, positions - mean_pos) * live
        span = weighted_span(dist[None], row_weight[None])[0]
    else:
        # sum_t w_t sum_s A[t,s] (t - s) = sum_t w_t t - sum_s s C_0[s]  (float64 sums; rows of mass 1)
        span = (row_weight.double() * positions.double() * live).sum() - sums.double() @ positions.double()
    return {"dist": dist, "span": span, "waad": waad, "cols": cols, "lse": lse, "sink": sink}, out


def _rest_of_row(
    q: torch.Tensor, k: torch.Tensor, skip: int, scale: float, positions: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-sum-exp of each row over its keys s >= skip, (H, L) float32 (``NO_KEYS`` for rows t < skip),
    and, given ``positions``, ``sum_{s >= skip} A'[t,s] s`` (0 for rows t < skip).

    One fused call over the tokens from ``skip`` on: row t >= skip sees keys skip..t, the kernel's
    top-left causal pattern.
    """
    n_heads, length, dim = q.shape
    lse = torch.full((n_heads, length), NO_KEYS, device=q.device)
    mean_pos = None if positions is None else torch.zeros(n_heads, length, device=q.device)
    if skip >= length:
        return lse, mean_pos
    qs, ks = q[:, skip:].contiguous(), k[:, skip:].contiguous()
    if positions is None:
        values = ks
    else:
        pos_col = positions[skip:][None, :, None].expand(ks.shape[0], length - skip, 1).to(q.dtype)
        values = torch.cat([pos_col, ks.new_zeros(ks.shape[0], length - skip, dim - 1)], -1)
    res, rest = causal_attention_with_lse(qs[None], ks[None], values[None], scale)
    lse[:, skip:] = rest[0].float()
    if mean_pos is not None:
        mean_pos[:, skip:] = res[0, ..., 0].float()
    return lse, mean_pos


def _map_block(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    sliding: int | None,
    start: int,
    span: tuple[int, int],
    skip: int = 0,
) -> torch.Tensor:
    """The (H, S, S) map block A[a:e, a:e] (padded coordinates) from its scores and the row lse.

    ``skip``: keys before the sequence's token ``skip`` are excluded sinks (0 in the block).
    """
    a, e = span
    n_heads = q.shape[0]
    group = n_heads // k.shape[0]
    size = e - a
    block = torch.zeros(n_heads, size, size, device=q.device)
    lo, hi = max(a, start) - start, min(e, start + q.shape[1]) - start
    if hi <= lo:
        return block
    kk = k[:, lo:hi].float().repeat_interleave(group, dim=0)
    scores = torch.matmul(q[:, lo:hi].float(), kk.transpose(1, 2)) * scale
    idx = torch.arange(hi - lo, device=q.device)
    allowed = idx[None, :] <= idx[:, None]
    if sliding is not None:
        allowed &= idx[:, None] - idx[None, :] < sliding
    allowed &= idx[None, :] + lo >= skip
    probs = (scores - lse[:, lo:hi, None]).exp() * allowed
    off = lo + start - a
    block[:, off : off + hi - lo, off : off + hi - lo] = probs
    return block
