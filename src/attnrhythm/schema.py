"""Constants and parsers of the record format, shared by analysis and reports (no torch import)."""

from __future__ import annotations

from .errors import AttnRhythmError

SCHEMA_VERSION = 1
MAX_MAP_SPAN = 512


def parse_span(spec: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``START:END`` or (start, end) (response-relative, END exclusive, at most 512 tokens)."""
    if isinstance(spec, str):
        try:
            a, b = spec.split(":")
            start, end = int(a), int(b)
        except ValueError:
            raise AttnRhythmError(f"bad span {spec!r}: write START:END with integers, e.g. 0:128") from None
    else:
        try:
            start, end = (int(x) for x in spec)
        except (TypeError, ValueError):
            raise AttnRhythmError(f"bad span {spec!r}: give (start, end) integers, e.g. (0, 128)") from None
    if start < 0 or end <= start:
        raise AttnRhythmError(f"bad span {start}:{end}: need 0 <= START < END")
    if end - start > MAX_MAP_SPAN:
        raise AttnRhythmError(
            f"span {start}:{end} has {end - start} tokens: at most {MAX_MAP_SPAN} are allowed "
            f"(e.g. {start}:{start + MAX_MAP_SPAN})"
        )
    return start, end
