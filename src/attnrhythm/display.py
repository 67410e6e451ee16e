"""Jupyter display hooks: data classes ask here for their HTML view; the views register themselves.

The analysis never imports its views (they sit above it). :mod:`attnrhythm.views.report` registers
the trace view when it is imported, and ``import attnrhythm`` imports it inside IPython, so a
:class:`~attnrhythm.analyze.TraceResult` shows its report in a notebook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_VIEWS: dict[str, Callable[[Any], str]] = {}


def register(kind: str, view: Callable[[Any], str]) -> None:
    """Render objects of ``kind`` (e.g. ``"trace"``) with ``view``."""
    _VIEWS[kind] = view


def render(kind: str, obj: Any) -> str | None:
    """The HTML of ``obj`` from the registered view of ``kind``; None (plain repr) when none is."""
    view = _VIEWS.get(kind)
    return None if view is None else view(obj)
