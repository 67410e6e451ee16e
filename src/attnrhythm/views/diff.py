"""The rhythm-diff page: one self-contained HTML file (no scripts, no external resources).

Top: the overall numbers of :mod:`attnrhythm.diff` and the head transition table. Then one
section per trace, both sides aligned on one response-position axis: WAAD, FAI and the coupled
gamma of A (solid) and B (dashed) as SVG curves, the token strip with A's roles above each token
and B's below (a token whose roles changed is outlined), and the head grid coloured by each
head's class on A -> B. The CSS (``report_assets/diff.css``) is inlined.
"""

from __future__ import annotations

import html
import math
from importlib import resources
from pathlib import Path
from typing import Any

from attnrhythm.diff import ROLE_SETS, Diff, head_class_map
from attnrhythm.views.report import response_tokens, write_page

WIDTH, HEIGHT = 1000, 90
ROLE_MARK = {"dominated": "d", "anchor": "a", "intro": "i", "preplan": "p"}  # first role wins the colour


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def _curve(values_a: list[Any], values_b: list[Any], label: str) -> str:
    """Two curves on one SVG (A solid, B dashed), y scaled to the defined values of both."""
    n = max(len(values_a), 2)
    defined = [float(v) for v in values_a + values_b if v is not None and math.isfinite(float(v))]
    lo, hi = (min(defined), max(defined)) if defined else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5

    def path(values: list[Any]) -> str:
        parts, pen = [], "M"
        for t, v in enumerate(values):
            if v is None or not math.isfinite(float(v)):
                pen = "M"
                continue
            x = t * (WIDTH - 1) / (n - 1)
            y = HEIGHT - 4 - (float(v) - lo) / (hi - lo) * (HEIGHT - 8)
            parts.append(f"{pen}{x:.1f},{y:.1f}")
            pen = "L"
        return " ".join(parts)

    return (
        f'<div class="curve"><span class="lab">{html.escape(label)} '
        f'<span class="muted">[{lo:.3g}, {hi:.3g}]</span></span>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none">'
        f'<path class="a" d="{path(values_a)}"/><path class="b" d="{path(values_b)}"/></svg></div>'
    )


def _role_of(roles: dict[str, list[int]], t: int) -> str:
    return next((mark for name, mark in ROLE_MARK.items() if t in roles[name]), "")


def _strip(record_a: dict[str, Any], record_b: dict[str, Any]) -> str:
    tokens = response_tokens(record_a)
    roles_a = {name: set(record_a["roles"][name]) for name in ROLE_SETS}
    roles_b = {name: set(record_b["roles"][name]) for name in ROLE_SETS}
    spans = []
    for t, token in enumerate(tokens):
        in_a = [name for name in ROLE_SETS if t in roles_a[name]]
        in_b = [name for name in ROLE_SETS if t in roles_b[name]]
        changed = " ch" if in_a != in_b else ""
        tip = f"#{t}  A: {', '.join(in_a) or '-'}  B: {', '.join(in_b) or '-'}"
        spans.append(
            f'<span class="tok{changed}" title="{html.escape(tip)}"><i class="r {_role_of(roles_a, t)}"></i>'
            f"{html.escape(token)}<i class=\"r {_role_of(roles_b, t)}\"></i></span>"
        )
    return f'<div class="strip">{"".join(spans)}</div>'


def _head_grid(record_a: dict[str, Any], record_b: dict[str, Any]) -> str:
    class_a, class_b = head_class_map(record_a), head_class_map(record_b)
    rows = []
    for layer in record_a["layers"]:
        cells = []
        for (lay, head), ca in sorted(class_a.items()):
            if lay != layer or (lay, head) not in class_b:
                continue
            cb = class_b[(lay, head)]
            cells.append(
                f'<td class="h {ca[0]}{cb[0]}" title="layer {lay} head {head}: {ca} -> {cb}">'
                f"{ca[0].upper()}{'' if ca == cb else chr(8594) + cb[0].upper()}</td>"
            )
        rows.append(f"<tr><th>L{layer}</th>{''.join(cells)}</tr>")
    return f'<table class="heads">{"".join(rows)}</table>'


def _overall(summary: dict[str, Any]) -> str:
    overall = summary["overall"]
    rows = [
        f"<tr><td>Jaccard {name}</td><td>{_num(v['mean'])}</td><td>{_num(v['pooled'])}</td></tr>"
        for name, v in overall["jaccard"].items()
    ]
    rows += [
        f"<tr><td>Spearman {name.upper()}</td><td>{_num(v['mean'])}</td><td>{_num(v['median'])}</td></tr>"
        for name, v in overall["spearman"].items()
    ]
    rows += [
        f"<tr><td>gamma {html.escape(name)}: mean A / B, change</td><td>{_num(v['mean_a'])} / "
        f"{_num(v['mean_b'])}</td><td>{_num(v['mean_change'])}</td></tr>"
        for name, v in overall["gamma"].items()
    ]
    heads = overall["heads"]
    table = heads["transitions"]
    classes = list(table)
    trans = "".join(
        f"<tr><th>{a}</th>{''.join(f'<td>{table[a][b]}</td>' for b in classes)}</tr>" for a in classes
    )
    settings = summary.get("settings") or {}
    differ = (
        "<p class=\"muted\">settings that differ: "
        + html.escape(", ".join(f"{k}: {v[0]} vs {v[1]}" for k, v in settings.items()))
        + "</p>"
        if settings
        else ""
    )
    return (
        '<section class="card"><h2>Overall</h2>'
        f"<p>A: <code>{html.escape(summary['a']['source'])}</code> &middot; B: "
        f"<code>{html.escape(summary['b']['source'])}</code> &middot; {overall['traces']} trace(s), "
        f"{overall['tokens']} response tokens</p>{differ}"
        '<div class="row"><table class="nums"><tr><th></th><th>mean over traces</th>'
        f"<th>pooled / median</th></tr>{''.join(rows)}</table>"
        f'<table class="nums"><caption>head classes A (rows) &rarr; B (columns): {heads["changed"]} of '
        f"{heads['count']} changed</caption><tr><th></th>{''.join(f'<th>{c}</th>' for c in classes)}</tr>"
        f"{trans}</table></div></section>"
    )


def _trace(i: int, diff: dict[str, Any], record_a: dict[str, Any], record_b: dict[str, Any]) -> str:
    jac = ", ".join(f"{name} {_num(v)}" for name, v in diff["jaccard"].items())
    rho = ", ".join(f"{name.upper()} {_num(v['rho'])}" for name, v in diff["spearman"].items())
    curves = [
        _curve(record_a["metrics"]["waad"], record_b["metrics"]["waad"], "WAAD"),
        _curve(record_a["metrics"]["fai"], record_b["metrics"]["fai"], "FAI"),
    ]
    if "coupled" in (record_a.get("gamma") or {}) and "coupled" in (record_b.get("gamma") or {}):
        curves.append(_curve(record_a["gamma"]["coupled"], record_b["gamma"]["coupled"], "gamma (coupled)"))
    return (
        f'<section class="card" id="trace-{i}"><h2>#{i} {html.escape(diff["key"])} '
        f'<span class="muted">{diff["n"]} tokens</span></h2>'
        f"<p>Jaccard: {jac} &middot; Spearman: {rho} &middot; heads changed: "
        f"{len(diff['heads']['changed'])} of {diff['heads']['count']}</p>"
        f'<p class="legend"><span class="la">A solid</span> <span class="lb">B dashed</span> &middot; '
        'roles above a token: A, below: B (<i class="r p"></i>preplan <i class="r a"></i>anchor '
        '<i class="r d"></i>dominated <i class="r i"></i>intro); outlined: roles changed</p>'
        f"{''.join(curves)}{_strip(record_a, record_b)}{_head_grid(record_a, record_b)}</section>"
    )


def render_diff(diff: Diff) -> str:
    """The page as a string."""
    css = resources.files("attnrhythm.views").joinpath("report_assets", "diff.css").read_text("utf-8")
    body = [_overall(diff.summary)]
    for i, (trace, ra, rb) in enumerate(zip(diff.traces, diff.records_a, diff.records_b)):
        body.append(_trace(i, trace, ra, rb))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>attnrhythm rhythm diff</title><style>{css}</style></head><body>"
        '<header class="top"><h1>attnrhythm rhythm diff</h1></header><main>'
        + "".join(body)
        + "</main></body></html>\n"
    )


def write_diff_report(diff: Diff, out: str | Path) -> Path:
    """Write the diff page of ``diff`` to ``out`` atomically."""
    return write_page(render_diff(diff), out)
