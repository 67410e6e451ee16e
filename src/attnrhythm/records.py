"""JSONL inputs and outputs: parsing with clear errors, atomic writes, resumable runs.

Output protocol: records go to ``OUT.partial`` (one flushed line each); when the run ends the
partial file becomes ``OUT`` in one atomic step (renamed, or rewritten in input order when the
records were computed in another order). A rerun with the same ``OUT`` reads the records
already in ``OUT`` and/or ``OUT.partial`` (a torn last line is dropped), skips their keys and
appends only what is missing. A data-parallel run writes one such file per rank into the
directory ``OUT.parts`` and merges them into ``OUT`` at the end; readers of records accept
that directory too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnrhythm.errors import AttnRhythmError


@dataclass
class InputItem:
    """One line of an input file (or the --prompt/--response pair)."""

    index: int  # 1-based line number (0 for the command line)
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def key(self) -> str:
        """A stable identity: the user's ``id`` or a hash of the line's content."""
        if self.data is not None and "id" in self.data:
            return str(self.data["id"])
        blob = json.dumps(self.data, sort_keys=True, ensure_ascii=False)
        return f"line{self.index}-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


def check_file_target(path: str | Path, example: str = "out.jsonl") -> Path:
    """``path`` as an output file: an error in one line when it names a directory."""
    path = Path(path)
    if path.is_dir():
        raise AttnRhythmError(f"--out {path} is a directory: give a file name like {path / example}")
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a flushed temporary file beside it, then one rename.

    The one atomic write of the package (records, reports, head sets, settings, results); a
    ``path`` that names a directory is an error in one line.
    """
    path = check_file_target(path, "out" + (Path(path).suffix or ".txt"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (UTF-8, a final newline), written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the float range")
    return value


def parse_json_line(text: str) -> tuple[Any, str | None]:
    """(value, None) for one JSON line, or (None, why not): never raises on bad content.

    Refused besides invalid JSON: NaN/Infinity and numbers out of range, nesting too deep for
    Python, and strings that are not valid Unicode (lone surrogates such as ``"\\ud800"``),
    which could not be written back as UTF-8.
    """
    try:
        value = json.loads(text.lstrip("\ufeff"), parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        return None, f"is not valid JSON ({err.msg})"
    except RecursionError:
        return None, "is nested too deeply"
    except ValueError as err:
        return None, f"is not valid JSON ({err})"
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, "holds a string that is not valid Unicode (a lone surrogate escape like \\ud800)"
    except (RecursionError, ValueError):
        return None, "is nested too deeply"
    return value, None


def jsonl_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(1-based line number, text, None) of each non-blank line, or (number, None, why) for a line
    that is not UTF-8. Lines are split on b"\\n" and decoded one by one, so one bad byte costs one line."""
    try:
        fh = path.open("rb")
    except IsADirectoryError:
        raise AttnRhythmError(f"{path} is a directory: pass a JSONL file") from None
    except OSError as err:
        raise AttnRhythmError(
            f"cannot read {path} ({err.strerror}): check the path and its permissions"
        ) from None
    with fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, None, f"is not valid UTF-8 (byte {err.start + 1}): save the file as UTF-8"
                continue
            if text.strip():
                yield number, text, None


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode; a command-line argument with bytes that are not UTF-8
    (Python keeps them as lone surrogates) gets a one-line error naming ``what``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(value[err.start]) - 0xDC00 if 0xDC80 <= ord(value[err.start]) <= 0xDCFF else None
        shown = f" (byte 0x{byte:02x})" if byte is not None else ""
        raise AttnRhythmError(f"{what} is not valid UTF-8 text{shown}: pass UTF-8 text") from None
    return value


def read_inputs(path: str | Path) -> list[InputItem]:
    """Parse an input JSONL file: each line an object with ``prompt`` and optionally ``response``.

    Malformed lines (not UTF-8, not JSON, not an object, wrong field types) are returned with
    ``error`` set (reported and skipped by the caller). A ``.parquet`` file (read with pyarrow)
    is read the same way, one row per line, with its columns as the fields.
    """
    p = Path(path)
    if not p.exists():
        raise AttnRhythmError(f"input file {p} does not exist: pass a JSONL file with prompt/response lines")
    items: list[InputItem] = []
    parquet = p.suffix == ".parquet"
    if parquet:
        items = [_input_item(number, row) for number, row in enumerate(_parquet_rows(p), start=1)]
    for number, line, bad in () if parquet else jsonl_lines(p):
        if line is None:
            items.append(InputItem(number, None, f"line {number} {bad}"))
            continue
        data, bad = parse_json_line(line)
        items.append(InputItem(number, None, f"line {number} {bad}") if bad else _input_item(number, data))
    if not items:
        raise AttnRhythmError(
            f'input file {p} has no records: add lines like {{"prompt": ..., "response": ...}}'
        )
    if all(item.error is not None for item in items):
        raise AttnRhythmError(
            f"input file {p} has no readable line ({len(items)} lines; {items[0].error}): pass a JSONL "
            'file of {"prompt": ..., "response": ...} objects'
        )
    return items


def _input_item(number: int, data: Any) -> InputItem:
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        return InputItem(number, None, f'line {number} needs an object with a string "prompt"')
    if "response" in data and data["response"] is None:
        data = {k: v for k, v in data.items() if k != "response"}  # a Parquet null: prompt only
    if "response" in data and not isinstance(data["response"], str):
        return InputItem(number, None, f'line {number}: "response" must be a string')
    return InputItem(number, data)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AttnRhythmError(
            f"{path} is Parquet, which needs pyarrow: pip install pyarrow (or attnrhythm[ray])"
        ) from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid/OSError family
        raise AttnRhythmError(f"cannot read {path} as Parquet ({err}): pass Parquet or JSONL") from None
    for batch in table.iter_batches():
        for row in batch.to_pylist():  # values JSON cannot hold (dates, bytes) become their text
            yield json.loads(json.dumps(row, ensure_ascii=False, default=str))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete JSON object lines of ``path``; a torn last line and unreadable lines are skipped."""
    if not path.is_file():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # torn write at the end of an interrupted run
            try:
                value, bad = parse_json_line(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue
            if bad is None and isinstance(value, dict):
                yield value


def part_files(directory: Path) -> list[Path]:
    """The record files of a directory of parts (``OUT.parts`` of a data-parallel run, or any
    directory of JSONL outputs): its ``*.jsonl`` files and, of runs still going or killed,
    ``*.jsonl.partial`` files, by name."""
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.endswith((".jsonl", ".jsonl.partial"))
    )


def read_records(path: str | Path) -> list[Any]:
    """All records of a finished JSONL output (used by reports and studies); one-line errors.

    ``path`` may also be a directory of parts (see :func:`part_files`): its records, file by
    file; of a ``.partial`` file only the complete lines (a run may still be writing it).
    """
    p = Path(path)
    if not p.exists():
        raise AttnRhythmError(
            f"records file {p} does not exist: write one with `attnrhythm analyze --out {p}`"
        )
    if p.is_dir():
        files = part_files(p)
        if not files:
            raise AttnRhythmError(f"{p} is a directory without .jsonl files: pass a records file or parts")
        return [
            r
            for f in files
            for r in (iter_jsonl(f) if f.name.endswith(".partial") else read_records(f))
        ]
    records = []
    for number, line, bad in jsonl_lines(p):
        if line is not None:
            value, bad = parse_json_line(line)
        if bad is not None:
            raise AttnRhythmError(f"{p} line {number} {bad}")
        records.append(value)
    return records


class ResumableWriter:
    """Append-only JSONL writer with resume and an atomic final rename.

    >>> with ResumableWriter(Path("out.jsonl")) as w:
    ...     if not w.done("key"): w.write({"key": "key", ...})
    """

    def __init__(self, path: str | Path, key_field: str = "key", order: list[str] | None = None) -> None:
        """``order``: keys in the order ``path`` should list them when the run ends (records
        written in another order are rewritten in this one; keys it lacks come last)."""
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key_field = key_field
        self.order = order
        self._keys: set[str] = set()
        self._fh = None

    def __enter__(self) -> ResumableWriter:
        check_file_target(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing: dict[str, dict[str, Any]] = {}
        for source in (self.path, self.partial):
            for record in iter_jsonl(source):
                key = record.get(self.key_field)
                if key is not None:
                    existing[str(key)] = record
        # Rewrite the survivors into a fresh partial file atomically, then append to it.
        write_text_atomic(
            self.partial, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in existing.values())
        )
        self._keys = set(existing)
        self._fh = self.partial.open("a", encoding="utf-8")
        return self

    @property
    def resumed(self) -> int:
        """How many records were already there when the writer opened."""
        return len(self._keys)

    def done(self, key: str) -> bool:
        return key in self._keys

    def write(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "use ResumableWriter as a context manager"
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._keys.add(str(record[self.key_field]))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh is not None:
            self._fh.close()
        # Only a run that got to the end publishes the final file; an interrupted one keeps
        # OUT.partial for the next run to resume from.
        if exc_type is None:
            if self.order is None:
                os.replace(self.partial, self.path)
            else:
                write_ordered([self.partial], self.path, self.order, self.key_field)
                self.partial.unlink()


def write_ordered(sources: list[Path], out: Path, order: list[str], key_field: str = "key") -> int:
    """Write the records of ``sources`` (complete lines; a later source wins a key) to ``out``
    atomically, in the order of ``order``; keys it lacks follow in the order found. Lines are
    copied byte for byte from an index of offsets, so memory stays small on large outputs.
    Returns the number of records written."""
    where: dict[str, tuple[int, int, int]] = {}
    for s, source in enumerate(sources):
        if not source.is_file():
            continue
        with source.open("rb") as fh:
            offset = 0
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn write at the end of an interrupted run
                try:
                    value, bad = parse_json_line(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    bad = "not UTF-8"
                if bad is None and isinstance(value, dict) and value.get(key_field) is not None:
                    where[str(value[key_field])] = (s, offset, len(raw))
                offset += len(raw)
    rank = {key: i for i, key in enumerate(order)}
    keys = sorted(where, key=lambda k: rank.get(k, len(rank)))  # stable: the rest in found order
    handles = [source.open("rb") if source.is_file() else None for source in sources]
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            for key in keys:
                s, offset, size = where[key]
                src = handles[s]
                assert src is not None
                src.seek(offset)
                fh.write(src.read(size))
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for src in handles:
            if src is not None:
                src.close()
    os.replace(tmp, out)
    return len(keys)
