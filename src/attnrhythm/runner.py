"""Batch driver behind ``attnrhythm analyze`` and the Python API ``analyze_items``.

It turns input items into traces (generating responses where only a prompt is given), reports
and skips bad records, plans batches of similar length from the whole input, analyses them
with one forward pass each, and writes records through the resumable atomic writer, in input
order. The data-parallel engines (:mod:`attnrhythm.distributed`, :mod:`attnrhythm.ray_engine`)
run the same plan, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput, TraceResult
from attnrhythm.errors import AttnRhythmError
from attnrhythm.generate import generate, make_trace, prompt_ids
from attnrhythm.records import InputItem, ResumableWriter

#: input-line fields never copied into a record (the record writes its own)
RESERVED_FIELDS = frozenset({"prompt", "response", "key", "schema_version", "generated"})


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.7
    seed: int = 0


@dataclass
class RunSummary:
    written: int = 0
    resumed: int = 0
    errors: list[str] = field(default_factory=list)
    results: list[TraceResult] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    #: the file this process's records went to (``out``, or its part in a data-parallel run)
    out: Path | None = None
    #: records in ``out`` after a data-parallel run merged its parts (on the merging rank)
    merged: int | None = None


@dataclass
class Work:
    """One valid input item, ready to batch: its trace (``None`` until its response is generated)
    and its length in tokens (prompt + ``max_new_tokens`` for a prompt to answer)."""

    position: int  # place in the input
    item: InputItem
    trace: TraceInput | None
    length: int


def prepare(
    items: list[InputItem],
    tokenizer: Any,
    *,
    chat: bool,
    generation: GenerationConfig,
    max_len: int | None,
    errors: list[str],
) -> list[Work]:
    """Tokenise every item (the lengths the batches are planned from); the one-line errors of bad
    lines and of traces that cannot be analysed go to ``errors``, in input order."""
    work: list[Work] = []
    for position, item in enumerate(items):
        if item.error is not None:
            errors.append(item.error)
            continue
        data = item.data or {}
        if "response" not in data:
            length = len(prompt_ids(tokenizer, data["prompt"], chat=chat)) + generation.max_new_tokens
            work.append(Work(position, item, None, length))
            continue
        try:
            trace = _trace(item, data["response"], tokenizer, chat, max_len)
        except AttnRhythmError as err:
            errors.append(f"{_where(item)}{err}")
            continue
        work.append(Work(position, item, trace, len(trace.input_ids)))
    return work


def plan_batches(work: list[Work], batch_size: int, *, bucket: bool = True) -> list[list[Work]]:
    """Batches of at most ``batch_size`` traces; with ``bucket`` the traces are sorted by length
    first (ties: input order), so a batch holds traces of similar length and padding stays small.

    The plan depends only on the input, never on how many processes share it or on what an
    earlier run finished: a record is always computed in the same batch, so it is the same
    float for float whichever rank or run computes it."""
    if batch_size < 1:
        raise AttnRhythmError(f"bad --batch-size {batch_size}: it must be >= 1")
    ordered = sorted(work, key=lambda w: (w.length, w.position)) if bucket else list(work)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def batch_tokens(batch: list[Work]) -> int:
    """Token slots one forward over ``batch`` fills, padding included (its cost)."""
    return len(batch) * max(w.length for w in batch)


def padding_share(batches: list[list[Work]]) -> float:
    """Share of the token slots of ``batches`` that are padding."""
    slots = sum(batch_tokens(b) for b in batches)
    return 1 - sum(w.length for b in batches for w in b) / slots if slots else 0.0


def analyze_items(
    items: list[InputItem],
    model: Any,
    tokenizer: Any,
    config: AnalysisConfig,
    *,
    out: str | Path | None = None,
    batch_size: int = 4,
    chat: bool = True,
    generation: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    keep_results: bool = False,
    bucket: bool = True,
) -> RunSummary:
    """Analyse ``items``; returns what was written and the one-line errors of skipped records.

    Traces are batched by length (``bucket``) and the longest batches run first; ``out`` and the
    kept results list them in input order all the same."""
    generation = generation or GenerationConfig()
    analyzer = Analyzer(model, config)
    summary = RunSummary(out=Path(out) if out is not None else None)
    work = prepare(
        items, tokenizer, chat=chat, generation=generation, max_len=analyzer.max_len, errors=summary.errors
    )
    batches = plan_batches(work, batch_size, bucket=bucket)
    order = [w.item.key for w in work] if bucket else None
    writer = ResumableWriter(out, order=order) if out is not None else None
    with writer if writer is not None else _NullWriter() as w:
        summary.resumed = w.resumed
        run_batches(
            sorted(batches, key=batch_tokens, reverse=True) if bucket else batches,
            analyzer,
            tokenizer,
            w,
            summary,
            chat=chat,
            generation=generation,
            on_progress=on_progress,
            keep_results=keep_results,
        )
    return summary


def run_batches(
    batches: list[list[Work]],
    analyzer: Analyzer,
    tokenizer: Any,
    writer: Any,
    summary: RunSummary,
    *,
    chat: bool,
    generation: GenerationConfig,
    done_elsewhere: set[str] | frozenset[str] = frozenset(),
    on_progress: Callable[[int, int], None] | None = None,
    keep_results: bool = False,
) -> None:
    """Analyse ``batches`` in turn and write their records through ``writer`` (``done(key)``,
    ``write(record)``). A batch whose records all exist (in ``writer`` or ``done_elsewhere``) is
    skipped; one with some missing runs whole (the same batch as planned, so the same floats) and
    writes only the missing ones. Kept results come back in input order."""

    def missing(batch: list[Work]) -> list[Work]:
        return [w for w in batch if not writer.done(w.item.key) and w.item.key not in done_elsewhere]

    todo = [(batch, {id(w) for w in missing(batch)}) for batch in batches]
    todo = [(batch, miss) for batch, miss in todo if miss]
    total = sum(len(miss) for _, miss in todo)
    finished = 0
    kept: list[tuple[int, TraceResult, dict[str, Any]]] = []
    for batch, miss in todo:
        traces = _batch_traces(batch, analyzer.model, tokenizer, chat, generation, summary, analyzer.max_len)
        if traces:
            for w, result in zip([w for w, _ in traces], analyzer.analyze([t for _, t in traces])):
                if id(w) not in miss or writer.done(w.item.key):
                    continue
                record = {"key": w.item.key, **result.to_record(tokenizer)}
                writer.write(record)
                summary.written += 1
                if keep_results:
                    result.tokenizer = tokenizer
                    kept.append((w.position, result, record))
        finished += len(miss)
        if on_progress is not None:
            on_progress(finished, total)
    kept.sort(key=lambda x: x[0])
    summary.results.extend(r for _, r, _ in kept)
    summary.records.extend(r for _, _, r in kept)


def _where(item: InputItem) -> str:
    return "" if item.index == 0 else f"line {item.index}: "


def _trace(item: InputItem, response: str, tokenizer: Any, chat: bool, max_len: int | None) -> TraceInput:
    data = item.data or {}
    # input fields are copied, except those the record itself defines
    meta = {k: v for k, v in data.items() if k not in RESERVED_FIELDS}
    meta.update(prompt=data["prompt"], response=response, generated="response" not in data)
    trace = make_trace(tokenizer, data["prompt"], response, chat=chat, meta=meta)
    trace.check(max_len)
    return trace


def _batch_traces(
    batch: list[Work],
    model: Any,
    tokenizer: Any,
    chat: bool,
    generation: GenerationConfig,
    summary: RunSummary,
    max_len: int | None,
) -> list[tuple[Work, TraceInput]]:
    """The batch's traces; responses of prompt-only items are sampled first (one call, seeded by
    the batch's first such item, so a batch samples the same responses in every run)."""
    out: list[tuple[Work, TraceInput]] = []
    need_gen = [w for w in batch if w.trace is None]
    generated: dict[int, str] = {}
    if need_gen:
        prompts = [prompt_ids(tokenizer, w.item.data["prompt"], chat=chat) for w in need_gen]
        responses = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            seed=generation.seed + need_gen[0].item.index,
        )
        for w, ids in zip(need_gen, responses):
            generated[id(w)] = tokenizer.decode(ids)
    for w in batch:
        if w.trace is not None:
            out.append((w, w.trace))
            continue
        try:
            out.append((w, _trace(w.item, generated[id(w)], tokenizer, chat, max_len)))
        except AttnRhythmError as err:
            summary.errors.append(f"{_where(w.item)}{err}")
    return out


class _NullWriter:
    resumed = 0

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def done(self, key: str) -> bool:
        return False

    def write(self, record: dict[str, Any]) -> None:
        return None
