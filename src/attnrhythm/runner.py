"""Batch driver behind ``attnrhythm analyze`` and the Python API ``analyze_items``.

It turns input items into traces (generating responses where only a prompt is given), reports
and skips bad records, analyses the rest in batches with one forward pass each, and writes
records through the resumable atomic writer.
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
) -> RunSummary:
    """Analyse ``items``; returns what was written and the one-line errors of skipped records."""
    if batch_size < 1:
        raise AttnRhythmError(f"bad --batch-size {batch_size}: it must be >= 1")
    generation = generation or GenerationConfig()
    analyzer = Analyzer(model, config)
    summary = RunSummary()
    writer = ResumableWriter(out) if out is not None else None
    ctx = writer if writer is not None else _NullWriter()
    with ctx as w:
        summary.resumed = w.resumed
        todo: list[InputItem] = []
        for item in items:
            if item.error is not None:
                summary.errors.append(item.error)
            elif not w.done(item.key):
                todo.append(item)
        total = len(todo)
        finished = 0
        for start in range(0, total, batch_size):
            batch = todo[start : start + batch_size]
            traces = _traces(batch, model, tokenizer, chat, generation, summary, analyzer.max_len)
            if traces:
                for item, result in zip([b for b, _ in traces], analyzer.analyze([t for _, t in traces])):
                    record = result.to_record(tokenizer)
                    record = {"key": item.key, **record}
                    w.write(record)
                    summary.written += 1
                    if keep_results:
                        result.tokenizer = tokenizer
                        summary.results.append(result)
                        summary.records.append(record)
            finished += len(batch)
            if on_progress is not None:
                on_progress(finished, total)
    return summary


def _traces(
    batch: list[InputItem],
    model: Any,
    tokenizer: Any,
    chat: bool,
    generation: GenerationConfig,
    summary: RunSummary,
    max_len: int | None,
) -> list[tuple[InputItem, TraceInput]]:
    out: list[tuple[InputItem, TraceInput]] = []
    need_gen = [item for item in batch if "response" not in (item.data or {})]
    generated: dict[int, str] = {}
    if need_gen:
        prompts = [prompt_ids(tokenizer, item.data["prompt"], chat=chat) for item in need_gen]
        responses = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            seed=generation.seed + need_gen[0].index,
        )
        for item, ids in zip(need_gen, responses):
            generated[id(item)] = tokenizer.decode(ids)
    for item in batch:
        data = item.data or {}
        response = data.get("response", generated.get(id(item), ""))
        where = "" if item.index == 0 else f"line {item.index}: "
        try:
            # input fields are copied, except those the record itself defines
            meta = {k: v for k, v in data.items() if k not in RESERVED_FIELDS}
            meta.update(prompt=data["prompt"], response=response, generated="response" not in data)
            trace = make_trace(tokenizer, data["prompt"], response, chat=chat, meta=meta)
            trace.check(max_len)
        except AttnRhythmError as err:
            summary.errors.append(f"{where}{err}")
            continue
        out.append((item, trace))
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
