"""``attnrhythm report``: one self-contained HTML page for a records file.

The page has no external resources: its CSS and JavaScript (``report_assets/``) are inlined
and the data sits in ``<script type="application/json">`` blocks, one per trace, parsed only
when that trace is opened. Views (hash navigation): ``#index`` lists the traces with role
shares and distributions across traces; ``#trace-I`` (I = 0-based position in the file) shows

- the curves WAAD, Delta, FAI (global heads), FAI (receiver heads, when the record has
  ``metrics.fai_receiver``) and entropy over response positions on one shared x-axis, with
  peaks marked and a rug of the roles (canvas, min-max decimation, drag to zoom);
- the response as a token strip coloured by role, with one delegated tooltip handler;
- the mean local-head and global-head attention maps of a response window (from the
  record's ``maps``, or recomputed with a model through :func:`attnrhythm.analyze.compute_maps`);
- the head picture: span d[l,h] per analysed layer and head, local/global/receiver marked.

**Peaks** (report, figure and studies alike: :func:`attnrhythm.method.peaks.peaks`): position t is a
peak of a curve x when x_t is defined, x_t is among the ceil(q * count) largest defined values
(q = the record's ``credit.q``, the TopQ of docs/method.md; ties at the threshold count), x_t > x_{t-1}
and x_t >= x_{t+1} (an undefined or missing neighbour does not block). So peaks are the local
maxima among the tokens TopQ would select.

Numbers are rounded to 4 significant digits. Maps are stored as their causal lower triangle,
quantised to uint16 on a square-root scale (v = (k / 65535)^2 * vmax), base64-encoded.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from attnrhythm import display, spans
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import ROLE_NAMES
from attnrhythm.method.peaks import peaks
from attnrhythm.records import check_file_target, write_text_atomic
from attnrhythm.schema import SCHEMA_VERSION
from attnrhythm.tasks.mathcheck import math_reward

DEFAULT_SPAN = 128
ROLES = ROLE_NAMES

#: (metrics key, long label, short label, colour, peak colour)
SERIES = (
    ("waad", "WAAD (local)", "WAAD", "#2f6fde", "#173d85"),
    ("delta", "\u0394 WAAD", "\u0394", "#7d93b8", "#3f5478"),
    ("fai", "FAI (global)", "FAI", "#e07b00", "#8a4a00"),
    ("fai_receiver", "FAI (receiver)", "FAI receiver", "#1e9b62", "#0d5c38"),
    ("entropy", "entropy (nats)", "entropy", "#8e44ad", "#4f2161"),
)

MAPS_HOWTO = (
    "save them with <code>attnrhythm analyze --save-maps 0:128</code> or recompute them with "
    "<code>attnrhythm report RECORDS.jsonl --model MODEL</code>."
)


# ------------------------------------------------------------------ records and checks


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a records file: every record must be a schema-1 ``analyze`` record."""
    from attnrhythm.records import read_records

    records = read_records(path)
    if not records:
        raise AttnRhythmError(
            f"records file {path} has no records: write some with `attnrhythm analyze --out {path}`"
        )
    check_records(records, source=str(path))
    return records


def _where(record: Any, i: int, source: str | None) -> str:
    head = f"{source}: " if source else ""
    key = record.get("key") if isinstance(record, dict) else None
    return f"{head}record #{i}" + (f" (key {key!r})" if key is not None else "")


def n_response(record: dict[str, Any]) -> int:
    """Number of response tokens of a record."""
    return len(record["input_ids"]) - int(record["response_start"])


def check_records(records: list[Any], source: str | None = None) -> None:
    """Raise AttnRhythmError (one line) for the first record this report cannot render."""
    if not records:
        raise AttnRhythmError("there are no records to render: analyse some traces first")
    for i, record in enumerate(records):
        check_record(record, i, source)


def check_record(record: Any, i: int = 0, source: str | None = None) -> None:
    """Check one record's schema version and the fields the report and figure use."""
    where = _where(record, i, source)
    if not isinstance(record, dict):
        raise AttnRhythmError(f"{where} is not a JSON object: records are written by `attnrhythm analyze`")
    version = record.get("schema_version")
    if version is None:
        raise AttnRhythmError(
            f"{where} has no schema_version: it comes from an older or unknown format; "
            f"re-run `attnrhythm analyze` to write schema {SCHEMA_VERSION} records"
        )
    if version != SCHEMA_VERSION:
        raise AttnRhythmError(
            f"{where} has schema_version {version!r}, but this attnrhythm reads version {SCHEMA_VERSION}: "
            "re-run `attnrhythm analyze` with this version, or use the attnrhythm that wrote it"
        )

    def missing(field: str) -> AttnRhythmError:
        return AttnRhythmError(
            f"{where} lacks a valid {field!r}: it is not a complete attnrhythm record; "
            "write records with `attnrhythm analyze`"
        )

    if not isinstance(record.get("input_ids"), list) or not isinstance(record.get("response_start"), int):
        raise missing("input_ids/response_start")
    n = n_response(record)
    if n < 2:
        raise AttnRhythmError(f"{where} has {n} response tokens: the report needs at least 2")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise missing("metrics")
    for name in ("waad", "fai", "entropy", "delta", "fai_receiver", "logprob"):
        if name not in metrics and name in ("fai_receiver", "logprob"):
            continue
        values = metrics.get(name)
        if not isinstance(values, list):
            raise missing(f"metrics.{name}")
        if len(values) != n:
            raise AttnRhythmError(
                f"{where}: metrics.{name} has {len(values)} values but the response has {n} tokens"
            )
    roles = record.get("roles")
    if not isinstance(roles, dict):
        raise missing("roles")
    for name in ROLES:
        values = roles.get(name)
        if not isinstance(values, list) or not all(isinstance(t, int) and 0 <= t < n for t in values):
            raise missing(f"roles.{name}")
    heads = record.get("heads")
    layers = record.get("layers")
    if not isinstance(layers, list) or not isinstance(heads, dict):
        raise missing("layers/heads")
    distance = heads.get("distance")
    if (
        not isinstance(distance, list)
        or len(distance) != len(layers)
        or not all(isinstance(row, list) for row in distance)
    ):
        raise missing("heads.distance")
    for name in ("local", "global"):
        if not isinstance(heads.get(name), list):
            raise missing(f"heads.{name}")
    gamma = record.get("gamma", {})
    if not isinstance(gamma, dict) or not all(isinstance(v, list) and len(v) == n for v in gamma.values()):
        raise missing("gamma")
    tokens = record.get("tokens")
    if tokens is not None and (not isinstance(tokens, list) or len(tokens) != len(record["input_ids"])):
        raise missing("tokens")
    if "maps" in record and record["maps"] is not None:
        _saved_maps(record, where)


# ------------------------------------------------------------------ spans and maps


def parse_span(spec: str | tuple[int, int] | list[int] | None, **options: Any) -> tuple[int, int] | None:
    """:func:`attnrhythm.spans.parse_span`, letting None (no span asked) through."""
    return None if spec is None else spans.parse_span(spec, **options)


def _saved_maps(record: dict[str, Any], where: str) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    maps = record["maps"]
    try:
        a, b = (int(x) for x in maps["span"])
        local = np.asarray(maps["local"], dtype=np.float64)
        glob = np.asarray(maps["global"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise AttnRhythmError(
            f"{where}: its 'maps' field is malformed (need span, local, global): re-run "
            "`attnrhythm analyze --save-maps START:END`"
        ) from None
    size = b - a
    if size < 1 or local.shape != (size, size) or glob.shape != (size, size) or b > n_response(record):
        raise AttnRhythmError(
            f"{where}: its 'maps' do not match their span {a}:{b} (need {size}x{size} maps inside the "
            "response): re-run `attnrhythm analyze --save-maps START:END`"
        )
    return (a, b), local, glob


def trace_maps(
    record: dict[str, Any],
    span: tuple[int, int] | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """The mean local/global maps to show for a record, or a note saying why there are none.

    ``span`` None: the record's saved window, else the first 128 response tokens. A span inside
    the saved window is cut out of it; otherwise the maps are recomputed with ``model`` (via
    :func:`attnrhythm.analyze.compute_maps`) when one is given. Returns
    ``({"span": (s, e), "local": ndarray, "global": ndarray, "source": str}, None)`` or
    ``(None, note)``; the note is HTML.
    """
    n = n_response(record)
    saved = _saved_maps(record, "record") if record.get("maps") is not None else None
    if span is None:
        if saved is not None:
            (a, b), local, glob = saved
            return {"span": (a, b), "local": local, "global": glob, "source": "saved in the record"}, None
        span = (0, DEFAULT_SPAN)
    fitted = spans.clip_span(span, n)
    if fitted is None:
        return None, (
            f"The map window {span[0]}:{span[1]} is outside this response ({n} tokens): pick a --span "
            f"that starts before token {n - 1}."
        )
    s, e = fitted
    if saved is not None:
        (a, b), local, glob = saved
        if a <= s and e <= b:
            return {
                "span": (s, e),
                "local": local[s - a : e - a, s - a : e - a],
                "global": glob[s - a : e - a, s - a : e - a],
                "source": f"cut from the record's saved window {a}:{b}",
            }, None
    if model is not None:
        from attnrhythm.analyze import compute_maps

        maps = compute_maps(model, tokenizer, record, (s, e))
        a, b = (int(x) for x in maps["span"])
        return {
            "span": (a, b),
            "local": np.asarray(maps["local"], dtype=np.float64),
            "global": np.asarray(maps["global"], dtype=np.float64),
            "source": "recomputed with the model",
        }, None
    where = f" for the window {s}:{e}" if saved is not None else ""
    return None, f"No attention maps in this record{where}: {MAPS_HOWTO}"


def check_span_fits(records: list[dict[str, Any]], span: tuple[int, int] | None) -> None:
    """An explicit span must fall inside at least one response (every response for one record)."""
    if span is None:
        return
    lengths = [n_response(r) for r in records]
    if not any(spans.clip_span(span, n) is not None for n in lengths):
        which = (
            f"the response ({lengths[0]} tokens)"
            if len(lengths) == 1
            else (f"every response (the longest has {max(lengths)} tokens)")
        )
        raise AttnRhythmError(
            f"--span {span[0]}:{span[1]} is outside {which}: pick START < {max(lengths) - 1}"
        )


# ------------------------------------------------------------------ numbers


def _num(x: Any) -> float | int | None:
    """4 significant digits; None for missing / non-finite; integral values as int (shorter JSON)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    v = float(f"{v:.4g}")
    return int(v) if v.is_integer() and abs(v) < 1e15 else v


def _nums(values: list[Any]) -> list[float | int | None]:
    return [_num(v) for v in values]


def _defined(values: list[Any]) -> list[float]:
    out = []
    for v in values:
        if v is not None:
            f = float(v)
            if math.isfinite(f):
                out.append(f)
    return out


def record_q(record: dict[str, Any]) -> float:
    credit = record.get("credit") or {}
    try:
        q = float(credit.get("q", 0.4))
    except (TypeError, ValueError):
        q = 0.4
    return q if 0 < q <= 1 else 0.4


def response_tokens(record: dict[str, Any], tokenizer: Any = None) -> list[str]:
    """The decoded response tokens (``tokens`` field, else the tokenizer, else ``<id>``)."""
    r0 = int(record["response_start"])
    tokens = record.get("tokens")
    if tokens is not None:
        return [str(t) for t in tokens[r0:]]
    ids = record["input_ids"][r0:]
    if tokenizer is not None:
        return [tokenizer.decode([i]) for i in ids]
    return [f"<{i}>" for i in ids]


# ------------------------------------------------------------------ payloads


def _encode_map(matrix: np.ndarray) -> tuple[str, float]:
    """Causal lower triangle (row-major), uint16 on a sqrt scale, base64; returns (data, vmax)."""
    size = matrix.shape[0]
    tri = np.nan_to_num(np.asarray(matrix, dtype=np.float64)[np.tril_indices(size)], nan=0.0)
    tri = np.clip(tri, 0.0, None)
    vmax = float(tri.max()) if tri.size else 0.0
    if vmax <= 0:
        vmax = 1.0
    quant = np.round(np.sqrt(tri / vmax) * 65535).astype("<u2")
    return base64.b64encode(quant.tobytes()).decode("ascii"), vmax


def _sink_rows(heads: dict[str, Any]) -> list | None:
    """The per-head sink mass (``heads.sink_mass``, records from before it: None)."""
    mass = heads.get("sink_mass")
    return [_nums(row) for row in mass] if isinstance(mass, list) else None


def record_correct(record: dict[str, Any]) -> bool | None:
    """Whether the record's answer was correct: its ``correct`` field when it is a bool, else the
    response checked against its reference ``answer`` by the math checker (the last box, "the
    answer is", or the last number, equal as a number); None when the record has neither."""
    if isinstance(record.get("correct"), bool):
        return record["correct"]
    answer = record.get("answer")
    if answer is None or isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return None
    return math_reward(str(record.get("response", "")), answer) == 1.0


def _meta_pairs(record: dict[str, Any], n: int) -> list[list[str]]:
    pairs: list[list[str]] = [["response tokens", str(n)]]
    correct = record_correct(record)
    if correct is not None:
        pairs.append(["correct", "yes" if correct else "no"])
    for field in ("reward", "answer"):
        if field in record:
            pairs.append([field if field == "reward" else "reference", _short(record[field])])
    if "generated" in record:
        pairs.append(["generated", "yes" if record["generated"] else "no"])
    pairs.append(["layers", ",".join(str(x) for x in record["layers"])])
    if "window" in record:
        pairs.append(["W", str(record["window"])])
    horizon = record.get("fai_horizon")
    if isinstance(horizon, list) and len(horizon) == 2:
        pairs.append(["FAI horizon", f"{horizon[0]}:{'end' if horizon[1] is None else horizon[1]}"])
    if "head_quantile" in record:
        pairs.append(["head quantile", str(record["head_quantile"])])
    credit = record.get("credit") or {}
    for name in ("q", "amp", "alpha", "k", "selection"):
        if name in credit:
            pairs.append([name, _short(credit[name])])
    roles = record["roles"]
    for name in ("tau_waad", "tau_delta"):
        if roles.get(name) is not None:
            pairs.append([name.replace("_", " "), _short(_num(roles[name]))])
    return pairs


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def trace_payload(
    record: dict[str, Any],
    index: int,
    maps: dict[str, Any] | None,
    note: str | None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The JSON the page renders for one trace."""
    n = n_response(record)
    q = record_q(record)
    metrics = record["metrics"]
    series = []
    for key, label, short, colour, peak_colour in SERIES:
        if key not in metrics:
            continue
        found, threshold = peaks(metrics[key], q)
        series.append(
            {
                "key": key,
                "label": label,
                "short": short,
                "color": colour,
                "peakColor": peak_colour,
                "v": _nums(metrics[key]),
                "peaks": found,
                "thr": _num(threshold),
            }
        )
    roles = record["roles"]
    heads = record["heads"]
    payload: dict[str, Any] = {
        "i": index,
        "key": str(record.get("key", f"record {index}")),
        "n": n,
        "q": q,
        "tokens": response_tokens(record, tokenizer),
        "prompt": record.get("prompt") if isinstance(record.get("prompt"), str) else None,
        "meta": _meta_pairs(record, n),
        "series": series,
        "logprob": _nums(metrics["logprob"]) if "logprob" in metrics else None,
        "gamma": {name: _nums(v) for name, v in (record.get("gamma") or {}).items()},
        "roles": {name: list(roles[name]) for name in ROLES},
        "intro_of": {str(k): v for k, v in (roles.get("intro_of") or {}).items()},
        "heads": {
            "layers": list(record["layers"]),
            "d": [_nums(row) for row in heads["distance"]],
            "local": [list(h) for h in heads["local"]],
            "global": [list(h) for h in heads["global"]],
            "receiver": [list(h) for h in heads.get("receiver", [])],
            "sink": _sink_rows(heads),
            "sinks": (record.get("sinks") or {}).get("mode", "keep"),
        },
        "maps": None,
        "maps_note": note,
    }
    if maps is not None:
        local, vmax_local = _encode_map(maps["local"])
        glob, vmax_global = _encode_map(maps["global"])
        payload["maps"] = {
            "span": [int(maps["span"][0]), int(maps["span"][1])],
            "local": local,
            "global": glob,
            "vmax": {"local": vmax_local, "global": vmax_global},
            "source": maps["source"],
        }
    return payload


def _role_fractions(record: dict[str, Any], n: int) -> dict[str, float]:
    return {name: len(set(record["roles"][name])) / n for name in ROLES}


def _mean(values: list[Any]) -> float | None:
    vals = _defined(values)
    return sum(vals) / len(vals) if vals else None


def _histogram(values: list[float], bins: int, integer: bool = False) -> tuple[list[float], list[int]]:
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        pad = 0.5 if integer else max(abs(lo) * 0.1, 1e-3)
        lo, hi = lo - pad, hi + pad
    if integer:
        bins = int(min(bins, max(1, hi - lo + 1)))
    counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))
    return [_num(e) for e in edges], [int(c) for c in counts]


def index_payload(records: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """Rows of the index table and the histograms across traces."""
    rows = []
    pooled: dict[str, list[float]] = {"waad": [], "fai": [], "entropy": []}
    has = {"reward": False, "answer": False}
    any_correct = False
    for i, record in enumerate(records):
        n = n_response(record)
        metrics = record["metrics"]
        for name in pooled:
            pooled[name].extend(_defined(metrics[name]))
        row: dict[str, Any] = {
            "i": i,
            "key": str(record.get("key", f"record {i}")),
            "n": n,
            "frac": {k: _num(v) for k, v in _role_fractions(record, n).items()},
            "waad": _num(_mean(metrics["waad"])),
            "fai": _num(_mean(metrics["fai"])),
            "entropy": _num(_mean(metrics["entropy"])),
            "maps": record.get("maps") is not None,
        }
        correct = record_correct(record)
        if correct is not None:
            any_correct = True
            row["correct"] = "yes" if correct else "no"
        for field in has:
            if field in record:
                has[field] = True
                value = record[field]
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                row[field] = value if numeric else _short(value, 40)
        rows.append(row)
    columns = [
        {"key": "i", "label": "#", "kind": "num"},
        {"key": "key", "label": "key", "kind": "text"},
        {"key": "n", "label": "tokens", "kind": "num", "help": "response tokens"},
    ]
    if any_correct:
        columns.append(
            {"key": "correct", "label": "correct", "kind": "text", "help": "answer vs the reference"}
        )
    for field in ("reward", "answer"):
        if has[field]:
            label = "reference" if field == "answer" else field
            columns.append({"key": field, "label": label, "kind": "num" if _numeric(rows, field) else "text"})
    for name, label in (
        ("preplan", "preplan"),
        ("anchor", "anchor"),
        ("dominated", "dominated"),
        ("intro", "intro"),
    ):
        columns.append(
            {"key": name, "label": label, "kind": "pct", "help": f"share of response tokens: {name}"}
        )
    columns.append({"key": "rolebar", "label": "roles", "kind": "bar"})
    for name, label in (("waad", "mean WAAD"), ("fai", "mean FAI"), ("entropy", "mean entropy")):
        columns.append({"key": name, "label": label, "kind": "num"})
    hists = []
    for name, label, colour in (
        ("waad", "WAAD", "#2f6fde"),
        ("fai", "FAI (global)", "#e07b00"),
        ("entropy", "entropy (nats)", "#8e44ad"),
    ):
        if pooled[name]:
            edges, counts = _histogram(pooled[name], 40)
            hists.append(
                {
                    "label": label + " per token",
                    "unit": label,
                    "count_of": "tokens",
                    "edges": edges,
                    "counts": counts,
                    "color": colour,
                }
            )
    per_trace = [
        ("response length", "tokens", [r["n"] for r in rows], "#5b6b85", True),
        ("anchor share per trace", "share of tokens", [r["frac"]["anchor"] for r in rows], "#f39c12", False),
        (
            "dominated-anchor share per trace",
            "share of tokens",
            [r["frac"]["dominated"] for r in rows],
            "#d0312d",
            False,
        ),
        (
            "preplan share per trace",
            "share of tokens",
            [r["frac"]["preplan"] for r in rows],
            "#2f6fde",
            False,
        ),
    ]
    if has["reward"] and _numeric(rows, "reward"):
        per_trace.append(("reward", "reward", [r["reward"] for r in rows if "reward" in r], "#1e9b62", False))
    for label, unit, values, colour, integer in per_trace:
        values = _defined(values)
        if values:
            edges, counts = _histogram(values, 20, integer)
            hists.append(
                {
                    "label": label,
                    "unit": unit,
                    "count_of": "traces",
                    "edges": edges,
                    "counts": counts,
                    "color": colour,
                }
            )
    return {
        "corpus": None,
        "title": f"attnrhythm report \u2014 {len(records)} trace{'s' if len(records) != 1 else ''}",
        "source": source,
        "rows": rows,
        "columns": columns,
        "hists": hists,
    }


def corpus_payload(records: list[dict[str, Any]], heads: Any = None) -> dict[str, Any] | None:
    """Head stability for the index page.

    ``heads``: a corpus head set (the dict of ``attnrhythm heads`` or the path of its file); None
    computes it from ``records`` when there are at least 2 with the same analysed layers (else
    the page has no stability card).
    """
    from attnrhythm.headsets import check_corpus_heads, corpus_heads, load_corpus_heads

    if heads is None:
        if len(records) < 2:
            return None
        try:
            data = corpus_heads(records)
        except AttnRhythmError:
            return None  # mixed layers or quantiles: no corpus view
        origin = "computed from the traces of this report"
    else:
        if isinstance(heads, str | os.PathLike):
            data = load_corpus_heads(heads)
            origin = f"head set {heads}"
        else:
            check_corpus_heads(heads)
            data = heads
            origin = "the given head set"
    stability = data["stability"]
    return {
        "origin": origin,
        "traces": data["traces"],
        "layers": list(data["layers"]),
        "distance": [_nums(row) for row in data["distance"]],
        "local": [list(h) for h in data["local"]],
        "global": [list(h) for h in data["global"]],
        "stability": {
            name: [_nums(row) for row in stability[name]]
            for name in ("local", "global", "receiver")
            if name in stability
        },
        "keeps_class": {name: _num(data["keeps_class"].get(name)) for name in ("local", "global")},
    }


def _numeric(rows: list[dict[str, Any]], field: str) -> bool:
    values = [r[field] for r in rows if field in r]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


# ------------------------------------------------------------------ HTML

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="attnrhythm report">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
__CSS__
</style>
</head>
<body>
<header class="top"><h1><a href="#index">attnrhythm report</a></h1>
<span class="sub">__SUBTITLE__</span></header>
<main>
<noscript><p>This report draws its plots with JavaScript: please enable it.</p></noscript>
<div id="index" hidden></div>
<div id="trace" hidden></div>
</main>
<footer><span id="rendered"></span> &middot; peaks: local maxima among the TopQ (q = credit.q) values
of a curve
<details class="defs"><summary>definitions</summary><dl>
<dt>WAAD</dt><dd>how far back a token looks: sum over s &le; t of
A<sub>local</sub>[t,s]&middot;min(t&minus;s, W),
mean map of the local (shortest-span) heads</dd>
<dt>&Delta;</dt><dd>|WAAD<sub>t</sub> &minus; WAAD<sub>t+1</sub>|</dd>
<dt>FAI</dt><dd>how much later tokens attend to a token: mean of A<sub>global</sub>[t,s]
over the response tokens t from s+lo to s+hi, mean map of the global (longest-span) heads;
empty where no such t exists</dd>
<dt>entropy</dt><dd>of the next-token distribution that produced the token (nats)</dd>
<dt>preplan / anchor</dt><dd>the ceil(q&middot;n) largest &Delta; / FAI values (TopQ)</dd>
<dt>dominated anchor</dt><dd>an anchor with WAAD &le; tau_waad and a &Delta; &ge; tau_delta
among the k tokens before it; its <b>intro token</b> is the one of those with the largest &Delta;</dd>
<dt>&gamma; coupled</dt><dd>1 + (amp&minus;1) on anchors that are not dominated,
(1&minus;alpha)(amp&minus;1) on dominated anchors, alpha(amp&minus;1) added on intro tokens</dd>
</dl>Li et al. 2025, <a href="https://arxiv.org/abs/2510.13554">arXiv:2510.13554</a>;
attnrhythm's docs/method.md</details></footer>
<div id="tip" hidden></div>
<script type="application/json" id="ar-index">__INDEX__</script>
__TRACES__
<script>
__JS__
</script>
</body>
</html>
"""


def _json_block(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # No "<" at all inside the script element: it can neither close it nor open a comment.
    return text.replace("<", "\\u003c")


def _asset(name: str) -> str:
    return resources.files("attnrhythm.views").joinpath("report_assets", name).read_text(encoding="utf-8")


def render_html(
    records: list[dict[str, Any]],
    *,
    model: Any = None,
    tokenizer: Any = None,
    span: str | tuple[int, int] | None = None,
    source: str = "",
    heads: Any = None,
) -> str:
    """The report page as a string (see :func:`write_report`)."""
    check_records(records)
    corpus = corpus_payload(records, heads)
    parsed = parse_span(span)
    check_span_fits(records, parsed)
    blocks = []
    for i, record in enumerate(records):
        maps, note = trace_maps(record, parsed, model=model, tokenizer=tokenizer)
        payload = trace_payload(record, i, maps, note, tokenizer)
        blocks.append(f'<script type="application/json" id="ar-t{i}">{_json_block(payload)}</script>')
    index = index_payload(records, source)
    index["corpus"] = corpus
    subtitle = f"{len(records)} trace{'s' if len(records) != 1 else ''}"
    if source:
        subtitle += f" \u00b7 {source}"
    page = PAGE
    for name, value in (
        ("__TITLE__", html.escape(index["title"])),
        ("__SUBTITLE__", html.escape(subtitle)),
        ("__CSS__", _asset("report.css")),
        ("__INDEX__", _json_block(index)),
        ("__JS__", _asset("report.js")),
        ("__TRACES__", "\n".join(blocks)),
    ):
        page = page.replace(name, value, 1)
    return page


def write_report(
    records: list[dict],
    out: Path,
    *,
    model=None,
    tokenizer=None,
    span=None,
    heads=None,
) -> Path:
    """Write the self-contained HTML report of ``records`` to ``out`` (atomically) and return its path.

    ``span``: response window ``"START:END"`` or ``(start, end)`` of the attention maps (None: the
    record's saved maps, else 0:128; at most 512 tokens). ``model``/``tokenizer``: recompute maps
    that the records do not carry (``attnrhythm.analyze.compute_maps``). ``heads``: a corpus head
    set (path or dict of ``attnrhythm heads``) whose stability the page shows; None computes it
    from the records when there are at least 2 with the same layers.
    """
    return write_page(render_html(records, model=model, tokenizer=tokenizer, span=span, heads=heads), out)


def write_page(page: str, out: str | Path) -> Path:
    """Write a page atomically (a temporary file, then one rename)."""
    return write_text_atomic(check_file_target(out, "report.html"), page)


# ------------------------------------------------------------------ notebooks


class Report:
    """The report of some records, shown inline by Jupyter (``_repr_html_``) or saved.

    >>> from attnrhythm.views.report import Report
    >>> Report("r.jsonl")                      # the last expression of a cell renders the report
    >>> Report([result1, result2], tokenizer=tok, height=900).save("report.html")

    ``records``: analyze records (dicts), :class:`~attnrhythm.analyze.TraceResult` objects
    (turned into records with ``tokenizer``, or their own), or the path of a records file.
    The page goes into an ``<iframe srcdoc>`` sandboxed to run scripts only, so its CSS, its
    JavaScript and its hash navigation cannot touch the notebook's page (and the notebook's
    styles cannot touch it).
    """

    def __init__(
        self,
        records: Any,
        *,
        tokenizer: Any = None,
        span: str | tuple[int, int] | None = None,
        heads: Any = None,
        height: int = 760,
        model: Any = None,
    ) -> None:
        if isinstance(records, str | os.PathLike):
            self.records = load_records(records)
            self.source = str(records)
        else:
            self.records = [_as_record(r, tokenizer, i) for i, r in enumerate(records)]
            self.source = ""
        check_records(self.records)
        self.span, self.heads, self.height = span, heads, int(height)
        self.model, self.tokenizer = model, tokenizer

    @property
    def html(self) -> str:
        """The full self-contained page."""
        return render_html(
            self.records,
            model=self.model,
            tokenizer=self.tokenizer,
            span=self.span,
            source=self.source,
            heads=self.heads,
        )

    def save(self, out: str | Path) -> Path:
        """Write the page to ``out`` (atomically)."""
        return write_page(self.html, out)

    def _repr_html_(self) -> str:
        return iframe(self.html, self.height)

    def __len__(self) -> int:
        return len(self.records)


def _as_record(item: Any, tokenizer: Any, i: int) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    to_record = getattr(item, "to_record", None)
    if to_record is None:
        raise AttnRhythmError(
            f"item #{i} is a {type(item).__name__}: pass analyze records (dicts) or TraceResult objects"
        )
    record = to_record(tokenizer if tokenizer is not None else getattr(item, "tokenizer", None))
    record.setdefault("key", f"trace {i}")
    return record


def iframe(page: str, height: int = 760) -> str:
    """``page`` inside a sandboxed ``<iframe srcdoc>`` (scripts run, nothing reaches the host page)."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #d0d4dc;border-radius:4px" '
        'title="attnrhythm report"></iframe>'
    )


def _trace_view(result: Any) -> str:
    return Report([result])._repr_html_()


display.register("trace", _trace_view)  # TraceResult._repr_html_ renders with this report
