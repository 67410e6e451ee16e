"""docs/method.md sections 1-4 as pure functions: layers, head classes, WAAD, FAI, Delta, roles.

Every function takes the reductions of one sequence restricted to its response (index 0 is
the first response token) and returns plain tensors or index lists. "Undefined" values are
NaN in tensors and ``None`` in records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import CreditConfig
from attnrhythm.spans import parse_horizon  # noqa: F401  (the horizon of FAI, section 3)


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves away from zero for x >= 0 (docs/method.md's rounding)."""
    return int(math.floor(x + 0.5))


def default_layers(n_layers: int) -> list[int]:
    """``mid5``: 5 layers evenly spaced from floor(L/3) to floor(2L/3), rounded half-up, deduplicated."""
    points = np.linspace(n_layers // 3, 2 * n_layers // 3, 5)
    out: list[int] = []
    for p in points:
        layer = round_half_up(float(p))
        if layer not in out:
            out.append(layer)
    return out


def parse_layers(spec: str | list[int] | None, n_layers: int) -> list[int]:
    """``mid5`` (default), ``all``, or a comma list of layer indices (negative counts from the end)."""
    if spec is None or spec == "mid5":
        return default_layers(n_layers)
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str):
        try:
            items = [int(x) for x in spec.replace(" ", "").split(",") if x]
        except ValueError:
            raise AttnRhythmError(
                f"bad --layers {spec!r}: use 'mid5', 'all' or a comma list of layer indices like 3,7,11"
            ) from None
    else:
        items = [int(x) for x in spec]
    if not items:
        raise AttnRhythmError("--layers is empty: use 'mid5', 'all' or a comma list like 3,7,11")
    layers: list[int] = []
    for item in items:
        layer = item + n_layers if item < 0 else item
        if not 0 <= layer < n_layers:
            raise AttnRhythmError(
                f"layer {item} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        if layer not in layers:
            layers.append(layer)
    return sorted(layers)


# ---------------------------------------------------------------- heads (section 2)


@dataclass
class HeadClasses:
    """Local and global heads as (layer position, head) pairs into the analysed layers."""

    local: list[tuple[int, int]]
    global_: list[tuple[int, int]]


def head_distance(span: torch.Tensor, rows: int) -> torch.Tensor:
    """d[l,h]: mean over the ``rows`` response rows of ``sum_s A[t,s] * (t-s)``.

    ``span`` (L, H) is that sum over the response rows (:attr:`stats.LayerReductions.span`).
    """
    if rows < 1:
        raise AttnRhythmError("the head span needs at least one response token")
    return span.double() / rows


def classify_heads(distance: torch.Tensor, quantile: float = 0.3) -> HeadClasses:
    """The m = max(1, round(q * #heads)) smallest-span heads are local, the m largest global.

    One sort order decides both: ascending by d, ties broken by lower (layer, head) first;
    H_loc is its first m entries and H_glob its last m.
    """
    if not 0 < quantile <= 0.5:
        raise AttnRhythmError(f"bad head quantile {quantile}: it must be in (0, 0.5]")
    n_layers, n_heads = distance.shape
    values = distance.flatten().tolist()
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    m = max(1, round_half_up(quantile * len(values)))
    pair = [(i // n_heads, i % n_heads) for i in order]
    return HeadClasses(local=sorted(pair[:m]), global_=sorted(pair[-m:]))


def mean_over_heads(per_head: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """Average an (L, H, n) per-head vector over a set of (layer position, head) pairs."""
    index_l = torch.tensor([h[0] for h in heads], dtype=torch.long)
    index_h = torch.tensor([h[1] for h in heads], dtype=torch.long)
    return per_head[index_l, index_h].double().mean(0)


# ---------------------------------------------------------------- metrics (section 3)


def waad(waad_rows: torch.Tensor, local: list[tuple[int, int]]) -> torch.Tensor:
    """WAAD_t from per-head rows sum_s A[t,s] min(t-s, W), averaged over local heads."""
    return mean_over_heads(waad_rows, local)


def fai_counts(n: int, horizon: tuple[int, int | None]) -> torch.Tensor:
    """|T(s)| for s = 0..n-1 (response-relative): number of t in [s+lo, min(s+hi, n-1)]."""
    lo, hi = horizon
    s = torch.arange(n, dtype=torch.float64)
    last = torch.full_like(s, n - 1) if hi is None else torch.clamp(s + hi, max=n - 1)
    return torch.clamp(last - (s + lo) + 1, min=0)


def fai(
    col_rows: torch.Tensor, global_: list[tuple[int, int]], horizon: tuple[int, int | None]
) -> torch.Tensor:
    """FAI_s from per-head band column sums, averaged over global heads; NaN where T(s) is empty."""
    sums = mean_over_heads(col_rows, global_)
    counts = fai_counts(sums.shape[0], horizon)
    out = sums / counts.clamp_min(1)
    out[counts == 0] = float("nan")
    return out


def kurtosis(values: torch.Tensor) -> torch.Tensor:
    """Excess (Fisher) kurtosis along the last dimension, population moments, NaNs ignored."""
    x = values.double()
    ok = ~torch.isnan(x)
    count = ok.sum(-1).clamp_min(1)
    mean = torch.where(ok, x, 0).sum(-1) / count
    dev = torch.where(ok, x - mean[..., None], 0)
    m2 = (dev**2).sum(-1) / count
    m4 = (dev**4).sum(-1) / count
    return m4 / m2.clamp_min(1e-300) ** 2 - 3.0


def receiver_heads(
    col_rows: torch.Tensor, proximity: int, count: int
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Receiver heads after Bogdan et al. (2025, "Thought Anchors").

    A head's column score of response token s is the mean attention s receives from response
    tokens at least ``proximity`` positions later; heads are ranked by the excess kurtosis of
    their scores across tokens (highest first, ties: lower (layer, head) first) and the top
    ``count`` are returned, with the (L, H) kurtosis. ``col_rows`` holds the band column sums
    for the horizon (proximity, end), shape (L, H, n).
    """
    n = col_rows.shape[-1]
    counts = fai_counts(n, (proximity, None))
    scores = col_rows.double() / counts.clamp_min(1)
    scores[..., counts == 0] = float("nan")
    kurt = kurtosis(scores)
    n_heads = kurt.shape[1]
    flat = kurt.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-(flat[i] if not math.isnan(flat[i]) else -math.inf), i))
    return sorted((i // n_heads, i % n_heads) for i in order[:count]), kurt


def entropy_and_log_probs(
    logits: torch.Tensor, targets: torch.Tensor | None = None, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Entropy (nats) of softmax(logits) along the last dimension, and log p of ``targets``.

    Works in place: ``logits`` (rows, vocab; float32 or better) is overwritten with
    ``logits - max``; ``scratch`` (same shape and dtype, optional) receives the exponentials, so a
    caller looping over chunks allocates nothing vocab-sized per chunk. With x = logits - max,
    p = exp(x) / Z: entropy = log Z - sum exp(x) x / Z, log p(y) = x_y - log Z.
    """
    logits.sub_(logits.amax(-1, keepdim=True))
    exps = torch.exp(logits, out=scratch) if scratch is not None else logits.exp()
    total = exps.sum(-1)
    log_total = total.log()
    entropy = log_total - exps.mul_(logits).sum(-1) / total
    if targets is None:
        return entropy, None
    return entropy, logits.gather(-1, targets[:, None])[:, 0] - log_total


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) along the last dimension, in float32 or better."""
    return entropy_and_log_probs(logits.to(torch.float32, copy=True))[0]  # one copy: it works in place


def delta(waad_values: torch.Tensor) -> torch.Tensor:
    """Delta_t = |WAAD_t - WAAD_{t+1}|, NaN for the last response token."""
    out = torch.full_like(waad_values, float("nan"))
    out[:-1] = (waad_values[:-1] - waad_values[1:]).abs()
    return out


# ---------------------------------------------------------------- roles (section 4)


def top_q(values: torch.Tensor, q: float, *, bottom: bool = False) -> list[int]:
    """TopQ: the ceil(q * count) largest defined values (ties: lower index first), sorted by index.

    With ``bottom`` the smallest instead (same tie rule).
    """
    if not 0 < q <= 1:
        raise AttnRhythmError(f"bad q {q}: it must be in (0, 1]")
    vals = values.tolist()
    defined = [i for i, v in enumerate(vals) if not math.isnan(v)]
    take = math.ceil(q * len(defined))
    sign = 1.0 if bottom else -1.0
    chosen = sorted(defined, key=lambda i: (sign * vals[i], i))[:take]
    return sorted(chosen)


def nan_median(values: torch.Tensor) -> float:
    """numpy.median over defined values (mean of the two middle ones for an even count)."""
    arr = values.double().numpy()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan")
    return float(np.median(arr))


@dataclass
class Roles:
    """Role index lists (response-relative, ascending)."""

    preplan: list[int]
    anchor: list[int]
    dominated: list[int]
    intro: list[int]
    intro_of: dict[int, int]  # dominated anchor -> its introductory token
    tau_waad: float
    tau_delta: float


def find_roles(
    waad_values: torch.Tensor,
    fai_values: torch.Tensor,
    delta_values: torch.Tensor,
    *,
    q: float = CreditConfig.q,
    k: int = CreditConfig.k,
    tau_waad: float | None = None,
    tau_delta: float | None = None,
    bottom: bool = False,
) -> Roles:
    """Preplan = TopQ(Delta), anchor = TopQ(FAI), D and I(D) per docs/method.md section 4."""
    if k < 1:
        raise AttnRhythmError(f"bad k {k}: the look-back for dominated anchors must be >= 1")
    preplan = top_q(delta_values, q, bottom=bottom)
    anchor = top_q(fai_values, q, bottom=bottom)
    t_waad = nan_median(waad_values) if tau_waad is None else float(tau_waad)
    t_delta = nan_median(delta_values) if tau_delta is None else float(tau_delta)
    w = waad_values.tolist()
    d = delta_values.tolist()
    dominated: list[int] = []
    intro_of: dict[int, int] = {}
    for t in anchor:
        if not w[t] <= t_waad:
            continue
        window = [u for u in range(max(0, t - k), t) if not math.isnan(d[u])]
        if not window:
            continue
        best = max(window, key=lambda u: (d[u], u))  # ties: the u closest to t
        if d[best] >= t_delta:
            dominated.append(t)
            intro_of[t] = best
    intro = sorted(set(intro_of.values()))
    return Roles(preplan, anchor, dominated, intro, intro_of, t_waad, t_delta)
