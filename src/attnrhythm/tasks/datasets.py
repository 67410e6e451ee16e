"""Loaders for question/answer data: a local JSONL file, or a Hugging Face dataset from the local cache.

Both return a list of ``{"id", "question", "answer"}`` dicts (``answer`` as a string).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import jsonl_lines, parse_json_line

_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_answer(text: str) -> str:
    """The final answer of a GSM8K solution (``"... #### 1,234"`` -> ``"1234"``); other text unchanged."""
    match = _GSM8K_RE.search(str(text))
    if not match:
        return str(text).strip()
    return match.group(1).strip().replace(",", "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_jsonl_task(
    path: str | os.PathLike[str], *, question_field: str = "question", answer_field: str = "answer"
) -> list[dict[str, Any]]:
    """Read a JSONL file of objects with a question and an answer field; blank lines are skipped.

    The ``id`` is the record's ``id`` field when it has one, else ``<file stem>-<line number>``.
    """
    file = Path(path)
    if not file.is_file():
        raise AttnRhythmError(f"task file {file} does not exist: check the path")
    examples: list[dict[str, Any]] = []
    for lineno, line, why in jsonl_lines(file):
        record = None
        if why is None:
            record, why = parse_json_line(line)
        if why is not None:
            raise AttnRhythmError(f"{file} line {lineno} {why}: fix or remove that line")
        if not isinstance(record, dict):
            raise AttnRhythmError(f"{file} line {lineno} is not a JSON object: write one object per line")
        examples.append(_example(record, question_field, answer_field, f"{file} line {lineno}",
                                 f"{file.stem}-{lineno}"))  # fmt: skip
    if not examples:
        raise AttnRhythmError(f"task file {file} has no examples: add one JSON object per line")
    return examples


def _example(
    record: dict[str, Any], question_field: str, answer_field: str, where: str, default_id: str
) -> dict[str, Any]:
    for field, option in ((question_field, "question_field"), (answer_field, "answer_field")):
        if field not in record:
            fields = ", ".join(sorted(map(str, record))) or "none"
            raise AttnRhythmError(
                f"{where} has no field '{field}' (fields: {fields}): pass {option}= to name the right one"
            )
    return {
        "id": str(record.get("id", default_id)),
        "question": str(record[question_field]),
        "answer": str(record[answer_field]),
    }


@contextlib.contextmanager
def _offline(datasets_module: Any) -> Iterator[None]:
    """Force the Hugging Face libraries offline for the duration, then restore their settings."""
    saved_env = {key: os.environ.get(key) for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    patched: list[tuple[Any, str, Any]] = []
    modules = [getattr(datasets_module, "config", None)]
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module("huggingface_hub.constants"))
    for module in modules:
        for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            if module is not None and hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _looks_missing(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"FileNotFoundError", "ConnectionError", "DatasetNotFoundError", "OfflineModeIsEnabled",
                "LocalEntryNotFoundError"}:  # fmt: skip
        return True
    text = str(exc).lower()
    return any(word in text for word in ("offline", "couldn't reach", "not found", "doesn't exist", "cache"))


def load_hf_task(
    name: str,
    split: str = "train",
    *,
    config: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    answer_transform: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Load a Hugging Face dataset split from the local cache only (no network).

    ``answer_transform`` maps each raw answer to the reference (e.g. :func:`gsm8k_answer`).
    """
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as exc:
        raise AttnRhythmError(f"loading '{name}' needs the datasets package: pip install datasets") from exc
    label = name + (f" ({config})" if config else "") + f" split '{split}'"
    try:
        with _offline(datasets):
            data = datasets.load_dataset(name, config, split=split, download_mode="reuse_dataset_if_exists")
    except Exception as exc:  # the library raises many types for "not cached"
        if _looks_missing(exc):
            cfg = f", '{config}'" if config else ""
            raise AttnRhythmError(
                f"dataset {label} is not in the local Hugging Face cache ({_first_line(exc)}): "
                "download it first with network access, e.g. "
                f"python -c \"import datasets; datasets.load_dataset('{name}'{cfg})\""
            ) from exc
        raise AttnRhythmError(
            f"cannot load dataset {label} ({_first_line(exc)}): check the name, config and split"
        ) from exc
    examples = []
    for index, record in enumerate(data):
        example = _example(dict(record), question_field, answer_field, f"dataset {label} row {index}",
                           f"{name.replace('/', '_')}-{split}-{index}")  # fmt: skip
        if answer_transform is not None:
            example["answer"] = str(answer_transform(example["answer"]))
        examples.append(example)
    if not examples:
        raise AttnRhythmError(f"dataset {label} is empty: pick another split")
    return examples
