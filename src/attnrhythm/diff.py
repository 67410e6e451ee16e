"""Rhythm diff: the same token sequences read by two models (or two records files), compared.

The comparison (:func:`compare_records`, :func:`diff_records`) is a pure function of records;
:func:`diff_models` first analyses each trace under both models (one :class:`~attnrhythm.analyze.Analyzer`
each, the same :class:`~attnrhythm.analyze.AnalysisConfig`) and then compares. Per trace:

- ``jaccard``: |A & B| / |A | B| of each role set (preplan, anchor, dominated, intro); two empty sets
  count as 1 (they agree);
- ``spearman``: Spearman's rho (``scipy.stats.spearmanr``, average ranks for ties) of FAI and of WAAD
  over the response positions where both sides define the value; null when fewer than 2 such
  positions or one side is constant there;
- ``heads``: the class of every head (local, global, neither) on side A against side B, as a 3x3
  transition table ``transitions[class_a][class_b]`` over the heads of the layers both sides
  analysed, and the list of heads that changed class (a head in both sets counts as global);
- ``gamma``: per credit strategy both sides hold, the mean gamma over the response on each side, the
  mean change (B - A) and the mean absolute change.

``overall`` aggregates: role Jaccards as the mean over traces and pooled (summed intersections over
summed unions), Spearman as the mean and median over traces where rho is defined, the transition
tables summed, gamma changes averaged over all response tokens. The JSON schema is in docs/diff.md;
floats are float32 values (:func:`attnrhythm.schema.record_floats`), the file is written atomically.

Both sides must hold the same token sequences: a pair whose ``input_ids`` or ``response_start``
differ is refused with one line.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.schema import SCHEMA_VERSION, record_float

DIFF_VERSION = 1
ROLE_SETS = ("preplan", "anchor", "dominated", "intro")
CLASSES = ("local", "global", "neither")
CURVES = ("fai", "waad")
#: analysis settings a side's records carry; the diff lists those that differ
SETTINGS = ("layers", "window", "fai_horizon", "head_quantile", "credit")


# ------------------------------------------------------------------ one pair of records


def compare_records(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The diff of one trace read on two sides (both records of the same token sequence)."""
    key = str(a.get("key", b.get("key", "trace")))
    _check_record(a, f"side A, trace {key!r}", tokens_only=True)
    _check_record(b, f"side B, trace {key!r}", tokens_only=True)
    same_tokens(a, b, key)  # before the other fields: a different split shows as different lengths
    _check_record(a, f"side A, trace {key!r}")
    _check_record(b, f"side B, trace {key!r}")
    n = len(a["input_ids"]) - a["response_start"]
    roles = {}
    jaccard = {}
    for name in ROLE_SETS:
        set_a, set_b = set(a["roles"][name]), set(b["roles"][name])
        both, either = len(set_a & set_b), len(set_a | set_b)
        roles[name] = {"a": len(set_a), "b": len(set_b), "both": both, "either": either}
        jaccard[name] = record_float(both / either if either else 1.0)
    spearman = {name: _spearman(a["metrics"][name], b["metrics"][name]) for name in CURVES}
    heads = _head_changes(a, b, key)
    gamma = {}
    for name in a.get("gamma") or {}:
        if name in (b.get("gamma") or {}):
            gamma[name] = _gamma_change(a["gamma"][name], b["gamma"][name])
    return {
        "key": key,
        "n": n,
        "jaccard": jaccard,
        "roles": roles,
        "spearman": spearman,
        "heads": heads,
        "gamma": {name: _floats(g) for name, g in gamma.items()},
    }


def _floats(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k == "n" else record_float(v) for k, v in block.items()}


def same_tokens(a: dict[str, Any], b: dict[str, Any], key: str) -> None:
    """Refuse (one line) a pair of records that do not hold the same token sequence."""
    ids_a, ids_b = list(a["input_ids"]), list(b["input_ids"])
    if ids_a != ids_b:
        at = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        raise AttnRhythmError(
            f"trace {key!r}: the two sides hold different token sequences (input_ids differ at token {at}; "
            f"{len(ids_a)} vs {len(ids_b)} tokens): diff the same traces on both sides (analyse one input "
            "file with both models, with the same tokenizer)"
        )
    if a["response_start"] != b["response_start"]:
        raise AttnRhythmError(
            f"trace {key!r}: the two sides split prompt and response differently (response_start "
            f"{a['response_start']} vs {b['response_start']}): analyse both with the same --chat setting"
        )


def _spearman(x: Sequence[Any], y: Sequence[Any]) -> dict[str, Any]:
    """Spearman's rho over the positions where both values are defined (null if undefined)."""
    from scipy.stats import spearmanr

    pairs = [(float(u), float(v)) for u, v in zip(x, y) if _defined(u) and _defined(v)]
    rho = math.nan
    if len(pairs) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constant side: scipy warns and returns NaN
            rho = float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    return {"rho": record_float(rho if math.isfinite(rho) else None), "n": len(pairs)}


def _defined(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def head_class_map(record: dict[str, Any]) -> dict[tuple[int, int], str]:
    """(absolute layer, head) -> local / global / neither for every head of the analysed layers."""
    heads = record["heads"]
    local = {(int(x), int(y)) for x, y in heads["local"]}
    glob = {(int(x), int(y)) for x, y in heads["global"]}
    classes = {}
    for layer, row in zip(record["layers"], heads["distance"]):
        for head in range(len(row)):
            pair = (int(layer), head)
            classes[pair] = "global" if pair in glob else "local" if pair in local else "neither"
    return classes


def _head_changes(a: dict[str, Any], b: dict[str, Any], key: str) -> dict[str, Any]:
    class_a, class_b = head_class_map(a), head_class_map(b)
    rows_a = dict(zip(a["layers"], a["heads"]["distance"]))
    rows_b = dict(zip(b["layers"], b["heads"]["distance"]))
    common = [layer for layer in a["layers"] if layer in rows_b]
    for layer in common:
        if len(rows_a[layer]) != len(rows_b[layer]):
            raise AttnRhythmError(
                f"trace {key!r}: layer {layer} has {len(rows_a[layer])} heads on side A and "
                f"{len(rows_b[layer])} on side B: diff two checkpoints of the same architecture"
            )
    table = {ca: {cb: 0 for cb in CLASSES} for ca in CLASSES}
    changed = []
    for layer in common:
        for head in range(len(rows_a[layer])):
            ca, cb = class_a[(layer, head)], class_b[(layer, head)]
            table[ca][cb] += 1
            if ca != cb:
                changed.append([int(layer), head, ca, cb])
    return {
        "layers": [int(x) for x in common],
        "count": sum(sum(row.values()) for row in table.values()),
        "transitions": table,
        "changed": changed,
    }


def _gamma_change(ga: Sequence[Any], gb: Sequence[Any]) -> dict[str, Any]:
    pairs = [(float(u), float(v)) for u, v in zip(ga, gb) if _defined(u) and _defined(v)]
    n = len(pairs)
    if not n:
        return {"n": 0, "mean_a": None, "mean_b": None, "mean_change": None, "mean_abs_change": None}
    return {
        "n": n,
        "mean_a": math.fsum(u for u, _ in pairs) / n,
        "mean_b": math.fsum(v for _, v in pairs) / n,
        "mean_change": math.fsum(v - u for u, v in pairs) / n,
        "mean_abs_change": math.fsum(abs(v - u) for u, v in pairs) / n,
    }


def _check_record(record: Any, where: str, *, tokens_only: bool = False) -> None:
    """One line for a record this diff cannot read (the fields it uses)."""
    if not isinstance(record, dict):
        raise AttnRhythmError(f"{where} is not a JSON object: pass records written by `attnrhythm analyze`")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise AttnRhythmError(
            f"{where} has schema_version {record.get('schema_version')!r}, this attnrhythm reads "
            f"{SCHEMA_VERSION}: re-run `attnrhythm analyze` to write current records"
        )

    def bad(name: str) -> AttnRhythmError:
        return AttnRhythmError(
            f"{where} lacks a valid {name!r}: it is not a complete attnrhythm record; write records "
            "with `attnrhythm analyze`"
        )

    ids, r0 = record.get("input_ids"), record.get("response_start")
    if not isinstance(ids, list) or not isinstance(r0, int) or not 0 < r0 < len(ids):
        raise bad("input_ids/response_start")
    if tokens_only:
        return
    n = len(ids) - r0
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise bad("metrics")
    for name in CURVES:
        if not isinstance(metrics.get(name), list) or len(metrics[name]) != n:
            raise bad(f"metrics.{name}")
    roles = record.get("roles")
    if not isinstance(roles, dict):
        raise bad("roles")
    for name in ROLE_SETS:
        values = roles.get(name)
        if not isinstance(values, list) or not all(isinstance(t, int) and 0 <= t < n for t in values):
            raise bad(f"roles.{name}")
    heads, layers = record.get("heads"), record.get("layers")
    if not isinstance(heads, dict) or not isinstance(layers, list):
        raise bad("heads/layers")
    distance = heads.get("distance")
    if not isinstance(distance, list) or len(distance) != len(layers):
        raise bad("heads.distance")
    for name in ("local", "global"):
        pairs = heads.get(name)
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise bad(f"heads.{name}")
    gamma = record.get("gamma", {})
    if not isinstance(gamma, dict) or not all(isinstance(v, list) and len(v) == n for v in gamma.values()):
        raise bad("gamma")


# ------------------------------------------------------------------ many traces


@dataclass
class Diff:
    """The result of a rhythm diff: the JSON summary and the records of both sides."""

    summary: dict[str, Any]
    records_a: list[dict[str, Any]] = field(repr=False)
    records_b: list[dict[str, Any]] = field(repr=False)

    @property
    def traces(self) -> list[dict[str, Any]]:
        return self.summary["traces"]

    @property
    def overall(self) -> dict[str, Any]:
        return self.summary["overall"]

    def save(self, out: str | Path) -> Path:
        """Write the JSON summary to ``out`` atomically (a temporary file, then one rename)."""
        out = Path(out)
        if out.is_dir():
            raise AttnRhythmError(f"--out {out} is a directory: give a file name like diff.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        text = json.dumps(self.summary, ensure_ascii=False, indent=1, allow_nan=False)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)
        return out


def diff_records(
    a: Any,
    b: Any,
    *,
    source_a: str = "",
    source_b: str = "",
) -> Diff:
    """Compare two sets of records of the same traces (lists of records, one record, or JSONL paths).

    Records are matched by ``key`` when every record on both sides has one, else by position;
    both sides must hold the same traces (the same keys, or as many records).
    """
    recs_a, source_a = _as_records(a, source_a)
    recs_b, source_b = _as_records(b, source_b)
    pairs = match_records(recs_a, recs_b)
    traces = [compare_records(x, y) for x, y in pairs]
    summary = {
        "diff_version": DIFF_VERSION,
        "a": {"source": source_a},
        "b": {"source": source_b},
        "settings": settings_differ(pairs[0][0], pairs[0][1]),
        "overall": aggregate(traces),
        "traces": traces,
    }
    return Diff(summary, [x for x, _ in pairs], [y for _, y in pairs])


def _as_records(value: Any, source: str) -> tuple[list[dict[str, Any]], str]:
    if isinstance(value, str | os.PathLike):
        from attnrhythm.records import read_records

        path = Path(value)
        if path.is_dir():
            raise AttnRhythmError(f"{path} is a directory: pass a records JSONL file of `attnrhythm analyze`")
        return read_records(path), source or str(path)
    if isinstance(value, dict):
        return [value], source
    records = list(value)
    return records, source


def match_records(
    recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of records of the same trace: by ``key`` when all have one, else by position."""
    if not recs_a or not recs_b:
        side = "A" if not recs_a else "B"
        raise AttnRhythmError(f"side {side} has no records: analyse some traces first")
    for side, recs in (("A", recs_a), ("B", recs_b)):
        for i, record in enumerate(recs):
            if not isinstance(record, dict):
                raise AttnRhythmError(
                    f"side {side}, record #{i} is not a JSON object: pass records written by "
                    "`attnrhythm analyze`"
                )
    keyed = all("key" in r for r in recs_a + recs_b)
    if not keyed:
        if len(recs_a) != len(recs_b):
            raise AttnRhythmError(
                f"side A has {len(recs_a)} records and side B {len(recs_b)}: diff records of the same traces"
            )
        return list(zip(recs_a, recs_b))
    by_key = {str(r["key"]): r for r in recs_b}
    keys_a = [str(r["key"]) for r in recs_a]
    missing_b = [k for k in keys_a if k not in by_key]
    missing_a = sorted(set(by_key) - set(keys_a))
    if missing_b or missing_a:
        side, keys = ("B", missing_b) if missing_b else ("A", missing_a)
        raise AttnRhythmError(
            f"side {side} lacks {len(keys)} trace(s) of the other side (first key {keys[0]!r}): diff "
            "records of the same traces"
        )
    return [(r, by_key[str(r["key"])]) for r in recs_a]


def settings_differ(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """The analysis settings whose values differ between two records: ``{name: [a, b]}``."""
    return {name: [a.get(name), b.get(name)] for name in SETTINGS if a.get(name) != b.get(name)}


def aggregate(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``overall`` block of a diff from its per-trace blocks."""
    tokens = sum(t["n"] for t in traces)
    jaccard = {}
    for name in ROLE_SETS:
        both = sum(t["roles"][name]["both"] for t in traces)
        either = sum(t["roles"][name]["either"] for t in traces)
        jaccard[name] = {
            "mean": record_float(statistics.fmean(t["jaccard"][name] for t in traces)),
            "pooled": record_float(both / either if either else 1.0),
        }
    spearman = {}
    for name in CURVES:
        rhos = [t["spearman"][name]["rho"] for t in traces if t["spearman"][name]["rho"] is not None]
        spearman[name] = {
            "mean": record_float(statistics.fmean(rhos)) if rhos else None,
            "median": record_float(statistics.median(rhos)) if rhos else None,
            "traces": len(rhos),
        }
    table = {
        ca: {cb: sum(t["heads"]["transitions"][ca][cb] for t in traces) for cb in CLASSES} for ca in CLASSES
    }
    count = sum(t["heads"]["count"] for t in traces)
    changed = sum(len(t["heads"]["changed"]) for t in traces)
    gamma = {}
    names = [name for name in traces[0]["gamma"] if all(name in t["gamma"] for t in traces)]
    for name in names:
        parts = [t["gamma"][name] for t in traces if t["gamma"][name]["n"]]
        n = sum(p["n"] for p in parts)
        gamma[name] = {
            key: record_float(math.fsum(p[key] * p["n"] for p in parts) / n if n else None)
            for key in ("mean_a", "mean_b", "mean_change", "mean_abs_change")
        }
    return {
        "traces": len(traces),
        "tokens": tokens,
        "jaccard": jaccard,
        "spearman": spearman,
        "heads": {
            "count": count,
            "changed": changed,
            "changed_share": record_float(changed / count if count else None),
            "transitions": table,
        },
        "gamma": gamma,
    }


# ------------------------------------------------------------------ analysing under two models


def diff_models(
    a: Any,
    b: Any,
    traces: Any,
    config: Any = None,
    *,
    chat: bool = True,
    batch_size: int = 4,
    device: str = "cpu",
    keep: str | Path | None = None,
    on_progress: Any = None,
) -> Diff:
    """Analyse ``traces`` under model ``a`` and model ``b`` and compare (see :func:`diff_records`).

    ``a``/``b``: model specs (as ``attnrhythm.load_model``: 'embedded', a checkpoint directory, a
    .gguf file, a cached hub id) or ``(model, tokenizer)`` pairs. ``traces``: the path of a JSONL
    file of prompt/response lines or of analyze records (their ``input_ids`` are used as they are),
    or a list of such dicts. ``config``: one :class:`~attnrhythm.analyze.AnalysisConfig` for both.
    ``keep``: a directory where the records of both sides are written (``a.jsonl``, ``b.jsonl``,
    atomic and resumable: a rerun analyses only the traces they lack).
    """
    from attnrhythm.analyze import AnalysisConfig

    config = config if config is not None else AnalysisConfig()
    if batch_size < 1:
        raise AttnRhythmError(f"bad --batch-size {batch_size}: it must be >= 1")
    items = _trace_items(traces)
    (model_a, tok_a), source_a = _model(a, device)
    (model_b, tok_b), source_b = _model(b, device)
    inputs = _trace_inputs(items, tok_a, tok_b, chat)
    sides = []
    for name, model, tok in (("a", model_a, tok_a), ("b", model_b, tok_b)):
        path = Path(keep) / f"{name}.jsonl" if keep is not None else None
        progress = (lambda done, total, _n=name: on_progress(_n, done, total)) if on_progress else None
        sides.append(_analyse_side(model, tok, inputs, config, batch_size, path, progress))
    return diff_records(sides[0], sides[1], source_a=source_a, source_b=source_b)


def _model(spec: Any, device: str) -> tuple[tuple[Any, Any], str]:
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec, type(spec[0]).__name__
    from attnrhythm.models import load_model

    return load_model(str(spec), device=device), str(spec)


def _trace_items(traces: Any) -> list[tuple[str, dict[str, Any]]]:
    """(key, dict) of each trace: prompt/response lines or records, from a path or a list."""
    from attnrhythm.records import InputItem, read_records

    if isinstance(traces, str | os.PathLike):
        path = Path(traces)
        if not path.is_file():
            raise AttnRhythmError(
                f"traces file {path} does not exist: pass a JSONL of prompt/response lines or analyze records"
            )
        values = read_records(path)
        where = str(path)
    else:
        values = list(traces)
        where = "traces"
    if not values:
        raise AttnRhythmError(f"{where} holds no traces: add prompt/response lines or analyze records")
    items = []
    for i, value in enumerate(values):
        line = f"{where} line {i + 1}"
        if not isinstance(value, dict):
            raise AttnRhythmError(f"{line} is not a JSON object: write prompt/response lines or records")
        if "input_ids" in value:
            ids, r0 = value.get("input_ids"), value.get("response_start")
            if (
                not isinstance(ids, list)
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
                or not isinstance(r0, int)
            ):
                raise AttnRhythmError(f"{line} has bad input_ids/response_start: pass analyze records")
            key = str(value.get("key", f"record{i + 1}"))
        else:
            if not isinstance(value.get("prompt"), str) or not isinstance(value.get("response"), str):
                raise AttnRhythmError(
                    f'{line} needs a string "prompt" and "response": diff reads the same text under both '
                    "models (for prompts only, sample responses with `attnrhythm analyze`, pass its records)"
                )
            key = InputItem(i + 1, value).key
        items.append((key, value))
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise AttnRhythmError(f"{where} has two traces with key {dup!r}: give each line its own id")
    return items


def _trace_inputs(items: list[tuple[str, dict[str, Any]]], tok_a: Any, tok_b: Any, chat: bool) -> list[Any]:
    """TraceInputs with the same token ids on both sides (refused where the tokenizers disagree)."""
    from attnrhythm.analyze import TraceInput
    from attnrhythm.generate import make_trace

    meta_fields = ("prompt", "response", "id", "answer", "reward")
    inputs = []
    for key, value in items:
        meta = {"key": key, **{k: value[k] for k in meta_fields if k in value}}
        if "input_ids" in value:
            inputs.append(TraceInput(list(value["input_ids"]), value["response_start"], meta))
            continue
        trace = make_trace(tok_a, value["prompt"], value["response"], chat=chat, meta=meta)
        other = make_trace(tok_b, value["prompt"], value["response"], chat=chat)
        if other.input_ids != trace.input_ids or other.response_start != trace.response_start:
            raise AttnRhythmError(
                f"trace {key!r}: the two models tokenize it differently: diff needs models with the same "
                "tokenizer (or pass records, whose input_ids are used as they are)"
            )
        inputs.append(trace)
    return inputs


def _analyse_side(
    model: Any,
    tokenizer: Any,
    inputs: list[Any],
    config: Any,
    batch_size: int,
    path: Path | None,
    on_progress: Any,
) -> list[dict[str, Any]]:
    """Records of ``inputs`` under one model (written through the resumable writer when ``path``)."""
    from attnrhythm.analyze import Analyzer
    from attnrhythm.records import ResumableWriter, read_records

    analyzer = Analyzer(model, config)
    vocab = model.get_input_embeddings().num_embeddings
    for trace in inputs:
        top = max(trace.input_ids)
        if top >= vocab:
            raise AttnRhythmError(
                f"trace {trace.meta['key']!r} holds token id {top}, but the model's vocabulary has {vocab} "
                "tokens: diff traces tokenized for this model"
            )
        try:
            trace.check(analyzer.max_len)
        except AttnRhythmError as err:
            raise AttnRhythmError(f"trace {trace.meta['key']!r}: {err}") from None
    records: dict[str, dict[str, Any]] = {}
    writer = ResumableWriter(path) if path is not None else None
    with writer if writer is not None else _Nothing():
        todo = [t for t in inputs if writer is None or not writer.done(t.meta["key"])]
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for result in analyzer.analyze(batch):
                record = result.to_record(tokenizer)  # meta first: "key" leads the record
                records[record["key"]] = record
                if writer is not None:
                    writer.write(record)
            if on_progress is not None:
                on_progress(min(start + batch_size, len(todo)), len(todo))
    if path is not None:
        records = {str(r.get("key")): r for r in read_records(path)}
    return [records[t.meta["key"]] for t in inputs]


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
