"""Where study problems come from: ``builtin`` word problems, a JSONL file, a cached HF dataset, or a
reasoning-gym dataset (``rg:NAME[:KEY=VALUE,...]``).

A response is *correct* when it states the reference answer (:func:`attnrhythm.tasks.math_reward`
with ``boxed_only=False``: the last ``\\boxed{}``, else "the answer is", else the last number), or,
for an ``rg:`` source, when the dataset's own ``score_answer`` gives it 1.0
(:class:`attnrhythm.tasks.GymTask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks import GymTask, MathTask, WordProblemTask, get_task, math_reward


@dataclass
class ProblemSet:
    """The problems of a study (``id``, ``prompt``, ``answer`` each) and how a response is scored."""

    problems: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    task: GymTask | None = None

    def correct(self, index: int, response: str) -> bool:
        """Whether ``response`` answers problem ``index`` correctly (module docstring)."""
        if self.task is not None:
            return self.task.reward(response, self.examples[index]) == 1.0
        return math_reward(response, self.problems[index]["answer"], boxed_only=False) == 1.0


def problem_set(source: str, n: int, seed: int = 0) -> ProblemSet:
    """``n`` problems drawn with ``seed`` from ``source`` (see :func:`load_problems`)."""
    if n < 1:
        raise AttnRhythmError(f"bad --n {n}: ask for at least 1 problem")
    task: GymTask | None = None
    if source == "builtin":
        examples = WordProblemTask().examples(n, seed)
    elif source.startswith("rg:"):
        task = get_task(source)  # type: ignore[assignment]
        examples = task.examples(n, seed)  # type: ignore[union-attr]
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
            f"unknown problem source {source!r}: use builtin, a .jsonl file, hf:NAME[:CONFIG[:SPLIT]] "
            "or rg:NAME[:KEY=VALUE,...]"
        )
    problems = [{"id": str(e["id"]), "prompt": e["prompt"], "answer": str(e["answer"])} for e in examples]
    return ProblemSet(problems, examples, task)


def load_problems(source: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` problems (dicts with ``id``, ``prompt``, ``answer``) drawn with ``seed``.

    ``source``: ``builtin`` (the seeded generator of :mod:`attnrhythm.tasks.wordproblems`), a
    JSONL path with ``question`` and ``answer`` fields, ``hf:NAME[:CONFIG[:SPLIT]]`` for a
    Hugging Face dataset already in the local cache (``hf:openai/gsm8k:main:test``; GSM8K
    answers are reduced to the number after ``####``), or ``rg:NAME[:KEY=VALUE,...]`` for a
    reasoning-gym dataset (``rg:gsm_symbolic``). Prompts ask for a ``\\boxed{}`` answer, or for
    an ``rg:`` source for ``<answer>`` tags (``answer_format=boxed`` asks for a box).
    """
    return problem_set(source, n, seed).problems
