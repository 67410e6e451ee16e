"""Where study problems come from: ``builtin`` word problems, a JSONL file, or a cached HF dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AttnRhythmError
from ..tasks import MathTask, WordProblemTask


def load_problems(source: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` problems (dicts with ``id``, ``prompt``, ``answer``) drawn with ``seed``.

    ``source``: ``builtin`` (the seeded generator of :mod:`attnrhythm.tasks.wordproblems`), a
    JSONL path with ``question`` and ``answer`` fields, or ``hf:NAME[:CONFIG[:SPLIT]]`` for a
    Hugging Face dataset already in the local cache (``hf:openai/gsm8k:main:test``; GSM8K
    answers are reduced to the number after ``####``). Prompts ask for a ``\\boxed{}`` answer.
    """
    if n < 1:
        raise AttnRhythmError(f"bad --n {n}: ask for at least 1 problem")
    if source == "builtin":
        examples = WordProblemTask().examples(n, seed)
    elif source.startswith("hf:"):
        parts = source[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise AttnRhythmError(
                f"bad --problems {source!r}: write hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT"
            )
        name = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else "test"
        examples = MathTask(name, split=split, config=config).examples(n, seed)
    elif source.endswith(".jsonl") or Path(source).exists():
        examples = MathTask(source).examples(n, seed)
    else:
        raise AttnRhythmError(
            f"unknown problem source {source!r}: use builtin, a .jsonl file, or hf:NAME[:CONFIG[:SPLIT]]"
        )
    return [{"id": str(e["id"]), "prompt": e["prompt"], "answer": str(e["answer"])} for e in examples]
