"""Peaks of a metric curve: the one definition shared by the report, the figure and the studies.

Position t of a curve x (response-relative; ``None``/NaN = undefined) is a **peak** when

* x_t is defined and among the ceil(q * count) largest defined values (docs/method.md's TopQ
  threshold; values tied with the threshold count), and
* with ``rule="local-max"`` (the default): x_t > x_{t-1} and x_t >= x_{t+1}; an undefined
  or missing neighbour does not block. So peaks are the local maxima among the values TopQ
  would select; q = 1 gives every local maximum.
* with ``rule="top"``: no neighbour condition (every TopQ value is a peak).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attnrhythm.errors import AttnRhythmError

PEAK_RULES = ("local-max", "top")


def check_peak_spec(q: float, rule: str) -> None:
    """Raise a one-line error for a bad peak definition."""
    if not 0 < q <= 1:
        raise AttnRhythmError(f"bad peak q {q}: it must be in (0, 1] (1 = every local maximum)")
    if rule not in PEAK_RULES:
        raise AttnRhythmError(f"unknown peak rule '{rule}': use one of {', '.join(PEAK_RULES)}")


def _clean(values: Sequence[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        out.append(f if math.isfinite(f) else None)
    return out


def peaks(values: Sequence[Any], q: float = 0.4, rule: str = "local-max") -> tuple[list[int], float | None]:
    """Peak positions of a curve (ascending) and the TopQ threshold (None for an empty curve)."""
    check_peak_spec(q, rule)
    vals = _clean(values)
    defined = sorted((v for v in vals if v is not None), reverse=True)
    if not defined:
        return [], None
    take = max(1, math.ceil(q * len(defined)))
    threshold = defined[min(take, len(defined)) - 1]
    out = []
    for t, v in enumerate(vals):
        if v is None or v < threshold:
            continue
        if rule == "local-max":
            prev = vals[t - 1] if t > 0 else None
            nxt = vals[t + 1] if t + 1 < len(vals) else None
            if not ((prev is None or v > prev) and (nxt is None or v >= nxt)):
                continue
        out.append(t)
    return out, threshold
