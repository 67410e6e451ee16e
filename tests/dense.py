"""Dense reference: docs/method.md computed from full eager attention maps (tests only).

It runs the model with ``attn_implementation="eager"`` and ``output_attentions=True`` on one
unpadded sequence, builds the mean local/global maps exactly as docs/method.md writes them and
evaluates every formula on the N x N maps in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnrhythm.method.rhythm import classify_heads, entropy_from_logits


@dataclass
class DenseResult:
    distance: torch.Tensor  # (L, H)
    local: list[tuple[int, int]]
    global_: list[tuple[int, int]]
    waad: torch.Tensor
    fai: torch.Tensor
    entropy: torch.Tensor
    maps: torch.Tensor  # (L, H, N, N) float64


@torch.no_grad()
def dense_maps(model, input_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All attention maps (layers, heads, N, N) in float64 and the logits (N, V)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(torch.tensor([input_ids]), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    maps = torch.stack([a[0] for a in out.attentions]).double()
    return maps, out.logits[0].double()


def dense_analysis(
    model,
    input_ids: list[int],
    response_start: int,
    layers: list[int],
    *,
    window: int = 10,
    horizon: tuple[int, int | None] = (10, 50),
    quantile: float = 0.3,
    exclude_sinks: int = 0,
) -> DenseResult:
    """``exclude_sinks`` = n > 0: every metric from A'[t,s] = A[t,s] / (1 - sum_{s'<n} A[t,s']) for
    s >= n, 0 for s < n (rows t < n: 0)."""
    maps_all, logits = dense_maps(model, input_ids)
    maps = maps_all[layers]
    if exclude_sinks:
        rest = maps[..., exclude_sinks:].sum(-1, keepdim=True)
        maps = torch.where(rest > 0, maps / rest.clamp_min(1e-300), 0.0)
        maps[..., :exclude_sinks] = 0.0
    n = len(input_ids)
    r0 = response_start
    t = torch.arange(n, dtype=torch.float64)
    gap = t[:, None] - t[None, :]  # t - s
    causal = gap >= 0
    dist = torch.where(causal, gap, torch.zeros_like(gap))
    per_row = (maps * dist).sum(-1)  # (L, H, N)
    distance = per_row[:, :, r0:].mean(-1)
    classes = classify_heads(distance, quantile)
    a_loc = torch.stack([maps[li, h] for li, h in classes.local]).mean(0)
    a_glob = torch.stack([maps[li, h] for li, h in classes.global_]).mean(0)
    capped = torch.clamp(dist, max=window)
    waad = (a_loc * capped).sum(-1)[r0:]
    lo, hi = horizon
    fai = torch.full((n - r0,), float("nan"), dtype=torch.float64)
    for s in range(r0, n):
        ts = [u for u in range(r0, n) if u >= s + lo and (hi is None or u <= s + hi)]
        if ts:
            fai[s - r0] = torch.stack([a_glob[u, s] for u in ts]).mean()
    entropy = entropy_from_logits(logits[r0 - 1 : n - 1])
    return DenseResult(distance, classes.local, classes.global_, waad, fai, entropy, maps)
