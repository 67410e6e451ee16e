"""Constants and parsers of the record format, shared by analysis and reports (no torch import)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from attnrhythm.spans import MAX_MAP_SPAN, parse_span

__all__ = ["MAX_MAP_SPAN", "SCHEMA_VERSION", "empty_metrics", "parse_span", "record_float", "record_floats"]

SCHEMA_VERSION = 1


def record_floats(values: Iterable[float | None]) -> list[float | None]:
    """Floats as records store them: the float32 value, written with its shortest round-trip repr.

    Every value keeps float32 precision (relative error <= 2**-24, about 6e-8) at any magnitude,
    in at most 9 significant digits (JSON stays compact: ``0.1`` stays ``0.1``). NaN (undefined)
    becomes ``None`` (JSON null). Records written with 6 decimals by older versions read the same way.
    """
    with np.errstate(over="ignore"):
        single = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64).astype(
            np.float32
        )
    # str() of a numpy float32 is the shortest string that reads back as the same float32
    return [None if v != v else float(str(v)) for v in single]


def record_float(value: float | None) -> float | None:
    """One float as :func:`record_floats` writes it."""
    return record_floats([value])[0]


def empty_metrics(records: Iterable[dict], fai_horizon: tuple[int, int | None] | None = None) -> list[str]:
    """One line per metric that is null for every token of every record (with how to fix it)."""
    seen = 0
    defined: dict[str, bool] = {}
    longest = 0
    for record in records:
        seen += 1
        metrics = record.get("metrics") or {}
        longest = max(longest, len(metrics.get("waad") or []))
        for name, values in metrics.items():
            defined[name] = defined.get(name, False) or any(v is not None for v in values or [])
    if not seen:
        return []
    out = []
    if defined.get("fai") is False:
        lo, hi = fai_horizon if fai_horizon is not None else (None, None)
        where = f"the FAI horizon {lo}:{'end' if hi is None else hi}" if lo is not None else "the FAI horizon"
        out.append(
            f"FAI is null for every token: {where} looks past the end of every response (the longest has "
            f"{longest} tokens), so there are no anchors and gamma is 1; pick a horizon inside the "
            f"responses, e.g. --fai-horizon {'10:50' if longest > 11 else '1:end'}"
        )
    same_cause = ("fai", "fai_receiver") if defined.get("fai") is False else ("fai",)
    for name in sorted(k for k, ok in defined.items() if not ok and k not in (*same_cause, "delta")):
        out.append(f"{name} is null for every token: check the settings and the inputs")
    return out
