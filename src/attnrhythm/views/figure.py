"""``attnrhythm figure``: a static, paper-ready picture of one trace (matplotlib, Agg).

The panels are those of the HTML report (:mod:`attnrhythm.views.report`): the mean local-head and
global-head attention maps of a response window (when the record carries them or a model
recomputes them), the head picture d[l,h] with local / global / receiver heads marked, and
the curves WAAD, Delta, FAI (global), FAI (receiver, when present) and entropy on one shared
x-axis with their peaks (local maxima among the TopQ values, see :func:`attnrhythm.method.peaks.peaks`), the
map window shaded and a rug of the roles below.

>>> from attnrhythm.views.figure import trace_figure
>>> fig = trace_figure(record)            # a matplotlib.figure.Figure (no pyplot state)
>>> fig.savefig("trace.pdf")
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from attnrhythm.errors import AttnRhythmError
from attnrhythm.views.report import (
    ROLES,
    SERIES,
    check_record,
    check_span_fits,
    n_response,
    parse_span,
    peaks,
    record_q,
    trace_maps,
)

FORMATS = (".png", ".pdf", ".svg")
ROLE_COLOURS = {"preplan": "#2f6fde", "anchor": "#f39c12", "dominated": "#d0312d", "intro": "#8e44ad"}
LOCAL_EDGE, GLOBAL_EDGE = "#2f6fde", "#0b7a3e"


def _matplotlib():
    """matplotlib's Figure (attached to the Agg canvas: no pyplot, no global backend state)."""
    try:
        from matplotlib import colors
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise AttnRhythmError("matplotlib is not installed: pip install matplotlib") from None

    def make(**kwargs):
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig

    return make, colors


def _plain(note: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", note))


def trace_figure(
    record: dict[str, Any],
    span: str | tuple[int, int] | None = None,
    *,
    maps: dict[str, Any] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    title: str | None = None,
    curves: str | tuple[int, int] | None = None,
):
    """The per-trace panels of one analysed record as a :class:`matplotlib.figure.Figure`.

    ``span``: response window ``"START:END"`` / ``(start, end)`` of the maps (None: the record's
    saved maps, else 0:128). ``maps``: precomputed ``{"span", "local", "global"}`` (e.g. from
    ``attnrhythm.analyze.compute_maps``); ``model``/``tokenizer``: recompute missing maps.
    ``curves``: x-range ``"START:END"`` of the curves (None: the whole response).
    """
    Figure, colors = _matplotlib()
    check_record(record)
    parsed = parse_span(span)
    check_span_fits([record], parsed)
    note = None
    if maps is not None:
        a, b = (int(x) for x in maps["span"])
        shown = {"span": (a, b), "local": np.asarray(maps["local"], float),
                 "global": np.asarray(maps["global"], float)}
    else:
        shown, note = trace_maps(record, parsed, model=model, tokenizer=tokenizer)

    n = n_response(record)
    xr = parse_range(curves)
    if xr is not None and xr[0] >= n - 1:
        raise AttnRhythmError(f"--curves {xr[0]}:{xr[1]} is outside the response ({n} tokens)")
    x_lo, x_hi = (0, n) if xr is None else (xr[0], min(xr[1], n))
    metrics = record["metrics"]
    series = [s for s in SERIES if s[0] in metrics]
    q = record_q(record)

    fig = Figure(figsize=(12, 4.2 + 1.05 * len(series) + 0.7), layout="constrained")
    outer = fig.add_gridspec(2, 1, height_ratios=[4.2, 1.05 * len(series) + 0.7])
    top = outer[0].subgridspec(1, 3, width_ratios=[1, 1, 0.9])
    bottom = outer[1].subgridspec(len(series) + 1, 1, height_ratios=[1] * len(series) + [0.7], hspace=0.08)

    # -- maps
    if shown is not None:
        s0, s1 = shown["span"]
        panels = ((0, "local", "local"), (1, "global", "global"))
        for col, name, label in panels:
            ax = fig.add_subplot(top[0, col])
            mat = np.array(shown[name], dtype=float)
            mat[np.triu_indices(mat.shape[0], 1)] = np.nan
            cmap = colors.ListedColormap(_cmap_colours()).with_extremes(bad="#eeeeee")
            vmax = float(np.nanmax(mat)) if np.isfinite(mat).any() else 1.0
            im = ax.imshow(
                mat,
                cmap=cmap,
                norm=colors.PowerNorm(0.5, vmin=0, vmax=vmax or 1.0),
                extent=(s0 - 0.5, s1 - 0.5, s1 - 0.5, s0 - 0.5),
                interpolation="nearest",
            )
            heads = len(record["heads"][name])
            ax.set_title(f"{label} heads (mean map of {heads})", fontsize=9)
            ax.set_xlabel("key (response token)", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
            ax.tick_params(labelsize=7)
            cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.01)
            cb.ax.tick_params(labelsize=6)
    else:
        ax = fig.add_subplot(top[0, 0:2])
        ax.axis("off")
        text = _plain(note or "no maps").replace("attnrhythm report", "attnrhythm figure")
        ax.text(0.5, 0.5, _wrap(text, 70), ha="center", va="center", fontsize=9,
                color="#555555", transform=ax.transAxes,
                bbox={"boxstyle": "round", "facecolor": "#fff8e6", "edgecolor": "#f2d58a"})
        s0 = s1 = None

    # -- head picture
    ax = fig.add_subplot(top[0, 2])
    _heads_panel(fig, ax, record, colors)

    # -- curves
    axes = []
    for k, (key, label, _short, colour, peak_colour) in enumerate(series):
        ax = fig.add_subplot(bottom[k, 0], sharex=axes[0] if axes else None)
        axes.append(ax)
        values = np.array([np.nan if v is None else float(v) for v in metrics[key]])
        x = np.arange(n)
        dense = x_hi - x_lo > 600
        ax.plot(x, values, color=colour, lw=0.55 if dense else 0.9)
        found, threshold = peaks(metrics[key], q)
        found = [t for t in found if x_lo <= t < x_hi]
        if found:
            ax.plot(found, values[found], "o", ms=1.6 if dense else 2.8, color=peak_colour, lw=0)
        shown_vals = values[x_lo:x_hi]
        if np.isfinite(shown_vals).any():
            lo, hi = float(np.nanmin(shown_vals)), float(np.nanmax(shown_vals))
            pad = 0.06 * (hi - lo) or 0.5 * (abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        if threshold is not None:
            ax.axhline(threshold, color="#555555", lw=0.6, ls=(0, (3, 3)))
        if s0 is not None:
            ax.axvspan(s0 - 0.5, s1 - 0.5, color="#466ec8", alpha=0.08, lw=0)
        ax.set_ylabel(label, fontsize=8, color=colour, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7, labelbottom=False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    rug = fig.add_subplot(bottom[len(series), 0], sharex=axes[0])
    for row, role in enumerate(ROLES):
        where = record["roles"][role]
        rug.vlines(where, row + 0.1, row + 0.9, color=ROLE_COLOURS[role],
                   lw=0.6 if x_hi - x_lo > 600 else 1.6)
    rug.set_yticks([r + 0.5 for r in range(len(ROLES))], list(ROLES), fontsize=7)
    for tick, role in zip(rug.get_yticklabels(), ROLES):
        tick.set_color(ROLE_COLOURS[role])
    rug.set_ylim(len(ROLES), 0)
    rug.set_xlim(x_lo - 0.5, x_hi - 0.5)
    rug.set_xlabel("response token", fontsize=8)
    rug.tick_params(labelsize=7)
    for side in ("top", "right", "left"):
        rug.spines[side].set_visible(False)
    rug.tick_params(axis="y", length=0)

    key = record.get("key", "trace")
    extra = "".join(f", {f} {record[f]}" for f in ("reward", "answer") if f in record)
    fig.suptitle(title or f"{key}: {n} response tokens{extra} (dots: peaks, local maxima in the top "
                 f"{q:.0%}; dashed: TopQ threshold)", fontsize=10)
    return fig


def _cmap_colours() -> list[tuple[float, float, float]]:
    """The report's sequential scale (white -> sand -> orange -> crimson -> aubergine), 256 steps."""
    stops = [(0, (255, 255, 255)), (0.12, (253, 236, 190)), (0.38, (247, 168, 92)), (0.68, (203, 60, 88)),
             (1, (52, 14, 72))]
    out = []
    for k in range(256):
        x = k / 255
        j = 1
        while j < len(stops) - 1 and x > stops[j][0]:
            j += 1
        (xa, ca), (xb, cb) = stops[j - 1], stops[j]
        f = (x - xa) / (xb - xa)
        out.append(tuple((ca[c] + (cb[c] - ca[c]) * f) / 255 for c in range(3)))
    return out


def _heads_panel(fig, ax, record: dict[str, Any], colors) -> None:
    from matplotlib.patches import Rectangle

    layers = list(record["layers"])
    dist = np.array([[np.nan if v is None else float(v) for v in row] for row in record["heads"]["distance"]])
    im = ax.imshow(dist, cmap=colors.ListedColormap(_cmap_colours()), aspect="auto", interpolation="nearest")
    row_of = {layer: i for i, layer in enumerate(layers)}
    for name, edge in (("local", LOCAL_EDGE), ("global", GLOBAL_EDGE)):
        for layer, head in record["heads"][name]:
            if layer in row_of:
                ax.add_patch(Rectangle((head - 0.42, row_of[layer] - 0.42), 0.84, 0.84, fill=False,
                                       edgecolor=edge, lw=1.6))
    receivers = [
        (row_of[layer], head) for layer, head in record["heads"].get("receiver", []) if layer in row_of
    ]
    if receivers:
        ax.plot([h for _, h in receivers], [r for r, _ in receivers], "o", color="#111111", ms=2.5, lw=0)
    ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers], fontsize=7)
    n_heads = dist.shape[1] if dist.ndim == 2 else 0
    step = 1 if n_heads <= 16 else 4
    ax.set_xticks(range(0, n_heads, step))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("query head", fontsize=8)
    legend = "boxes: blue = local, green = global" + ("; dots: receiver" if receivers else "")
    ax.set_title("head span d[l,h] (tokens)\n" + legend, fontsize=8)
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.01)
    cb.ax.tick_params(labelsize=6)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return "\n".join(lines)


def parse_range(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``START:END`` x-range of the curves (any length, >= 2 tokens) -> (start, end); None stays None."""
    return None if spec is None else parse_span(spec, what="--curves", max_len=None, min_len=2)


def check_out(out: str | Path) -> Path:
    """The output path of a figure: .png, .pdf or .svg."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise AttnRhythmError(
            f"--out {out}: the figure format comes from the file suffix; use .png, .pdf or .svg"
        )
    if out.is_dir():
        raise AttnRhythmError(f"--out {out} is a directory: give a file name like fig.png")
    return out


def pick(records: list[dict[str, Any]], index: int, source: str) -> dict[str, Any]:
    """The record at 0-based ``index`` with a clear error when out of range."""
    if not 0 <= index < len(records):
        raise AttnRhythmError(
            f"--index {index} is out of range: {source} has {len(records)} record"
            f"{'s' if len(records) != 1 else ''} (indices 0..{len(records) - 1})"
        )
    return records[index]

