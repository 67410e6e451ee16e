"""Response spans: ``START:END`` windows and the FAI horizon ``LO:HI`` / ``LO:end``, parsed and clipped.

One parser for every span the user writes (``--save-maps``, ``--span``, ``--curves``,
``--fai-horizon``) and one rule for clipping a span to a response. Pure Python: the command
line reads it without loading torch.
"""

from __future__ import annotations

from attnrhythm.errors import AttnRhythmError

MAX_MAP_SPAN = 512  # tokens of a kept attention map window


def _pair(spec: str | tuple | list, what: str, example: str, end_ok: bool) -> tuple[int, int | None]:
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start = int(parts[0])
            end = None if end_ok and parts[1].strip().lower() == "end" else int(parts[1])
        except ValueError:
            form = "START:END" if not end_ok else "LO:HI or LO:end"
            raise AttnRhythmError(
                f"bad {what} {spec!r}: write {form} with integers, e.g. {example}"
            ) from None
        return start, end
    try:
        start, end = spec
        return int(start), (None if end is None and end_ok else int(end))
    except (TypeError, ValueError):
        raise AttnRhythmError(f"bad {what} {spec!r}: give two integers, e.g. {example}") from None


def parse_span(
    spec: str | tuple[int, int] | list[int],
    *,
    what: str = "span",
    max_len: int | None = MAX_MAP_SPAN,
    min_len: int = 1,
) -> tuple[int, int]:
    """``START:END`` or (start, end) -> (start, end): response-relative, END exclusive.

    ``min_len <= END - START`` and, unless ``max_len`` is None, ``END - START <= max_len``.
    """
    start, end = _pair(spec, what, "0:128", end_ok=False)
    assert end is not None
    if start < 0 or end - start < min_len:
        need = "0 <= START < END" if min_len == 1 else f"0 <= START and END >= START + {min_len}"
        raise AttnRhythmError(f"bad {what} {start}:{end}: need {need}")
    if max_len is not None and end - start > max_len:
        raise AttnRhythmError(
            f"{what} {start}:{end} has {end - start} tokens: at most {max_len} are allowed "
            f"(e.g. {start}:{start + max_len})"
        )
    return start, end


def parse_horizon(spec: str | tuple[int, int | None] | list) -> tuple[int, int | None]:
    """FAI horizon ``LO:HI`` or ``LO:end`` (or (lo, hi), hi None for end) -> (lo, hi); 0 <= lo <= hi."""
    lo, hi = _pair(spec, "FAI horizon", "10:50", end_ok=True)
    if lo < 0 or (hi is not None and hi < lo):
        raise AttnRhythmError(f"bad FAI horizon {lo}:{'end' if hi is None else hi}: need 0 <= LO <= HI")
    return lo, hi


def clip_span(span: tuple[int, int], n_response: int) -> tuple[int, int] | None:
    """``span`` clipped to a response of ``n_response`` tokens; None when < 2 of its tokens are in it."""
    start, end = span
    if start >= n_response - 1:
        return None
    return start, min(end, n_response)
