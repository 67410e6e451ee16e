"""Constants and parsers of the record format, shared by analysis and reports (no torch import)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from attnrhythm.spans import MAX_MAP_SPAN, parse_span

__all__ = ["MAX_MAP_SPAN", "SCHEMA_VERSION", "parse_span", "record_float", "record_floats"]

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
