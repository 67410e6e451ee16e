"""Verifiable tasks shared by the mechanism studies and RL training.

Every task has a ``name``, ``examples(n, seed)`` returning dicts with ``id`` and ``prompt``
(plus ``answer``, or ``numbers`` and ``target``), and ``reward(completion, example)`` in [0, 1]::

    from attnrhythm.tasks import get_task
    task = get_task("countdown")
    batch = task.examples(8, seed=0)
    task.reward("<answer> (3 + 5) * 2 </answer>", batch[0])

Tasks: ``countdown`` (TinyZero protocol, see :mod:`.countdown`), ``wordproblems`` (built-in
generator, :mod:`.wordproblems`), ``arithmetic`` (short integer expressions with a boxed answer,
an easy task for small models, :mod:`.arithmetic`) and ``math`` (a JSONL file or a cached
Hugging Face dataset, checked with :mod:`.mathcheck`).  ``rg:NAME[:KEY=VALUE,...]`` is any
reasoning-gym dataset, scored with its own ``score_answer`` (:mod:`.gym`; needs the ``tasks``
extra)::

    task = get_task("rg:gsm_symbolic")
    task = get_task("rg:countdown:min_numbers=3,max_numbers=4")
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks.arithmetic import ArithmeticTask
from attnrhythm.tasks.countdown import (
    CountdownInstance,
    ExpressionError,
    countdown_reward,
    evaluate,
    generate_countdown,
    parse_answer_tag,
    solve,
    verify,
)
from attnrhythm.tasks.datasets import gsm8k_answer, load_hf_task, load_jsonl_task
from attnrhythm.tasks.gym import GymTask, dataset_names, make_gym_task
from attnrhythm.tasks.mathcheck import (
    BOXED_INSTRUCTION,
    answers_match,
    extract_answer,
    math_prompt,
    math_reward,
    normalize_answer,
)
from attnrhythm.tasks.wordproblems import Problem, generate_problems


@runtime_checkable
class Task(Protocol):
    """A verifiable task: seeded examples and a reward for a completion on one of them."""

    name: str

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]: ...

    def reward(self, completion: str, example: dict[str, Any]) -> float: ...


def _field(example: dict[str, Any], key: str, task: str) -> Any:
    if key not in example:
        raise AttnRhythmError(
            f"example has no '{key}' field: pass an example made by the {task} task's examples()"
        )
    return example[key]


def _check_n(n: int) -> None:
    if n < 0:
        raise AttnRhythmError(f"n={n} is negative: ask for zero or more examples")


@dataclass
class CountdownTask:
    """Countdown (TinyZero): reward 1.0 / ``format_score`` / 0.0, see :func:`countdown_reward`."""

    use_all: bool = True
    format_score: float = 0.1
    malformed_score: float | None = None
    n_numbers: tuple[int, int] = (3, 4)
    max_number: int = 100
    target_range: tuple[int, int] = (1, 100)
    name: str = field(default="countdown", init=False)

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        _check_n(n)
        instances = generate_countdown(
            n, seed, n_numbers=self.n_numbers, max_number=self.max_number, target_range=self.target_range
        )
        return [
            {
                "id": inst.id,
                "prompt": inst.prompt(use_all=self.use_all),
                "numbers": list(inst.numbers),
                "target": inst.target,
                "solution": inst.witness,
            }
            for inst in instances
        ]

    def reward(self, completion: str, example: dict[str, Any]) -> float:
        return countdown_reward(
            completion,
            _field(example, "numbers", self.name),
            _field(example, "target", self.name),
            format_score=self.format_score,
            use_all=self.use_all,
            malformed_score=self.malformed_score,
        )


@dataclass
class WordProblemTask:
    """Built-in word problems; the reward checks the final answer (``\\boxed{}`` by default)."""

    steps: tuple[int, int] | None = None
    boxed_only: bool = True
    name: str = field(default="wordproblems", init=False)

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        _check_n(n)
        return [
            {
                "id": p.id,
                "prompt": math_prompt(p.question),
                "question": p.question,
                "answer": p.answer_text,
                "steps": p.steps,
                "template": p.template,
                "solution": p.solution,
            }
            for p in generate_problems(n, seed, steps=self.steps)
        ]

    def reward(self, completion: str, example: dict[str, Any]) -> float:
        return math_reward(completion, _field(example, "answer", self.name), boxed_only=self.boxed_only)


@dataclass
class MathTask:
    """Questions with reference answers from a JSONL file or a locally cached Hugging Face dataset.

    ``source`` is a path (a ``.jsonl`` name or an existing file) or a dataset name such as
    ``openai/gsm8k`` (with ``config="main"``).  A GSM8K name gets :func:`gsm8k_answer` as its
    answer transform unless one is given.  ``examples(n, seed)`` is a seeded sample without
    replacement; ask for at most the number of records.
    """

    source: str | Path
    split: str = "train"
    config: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    answer_transform: Callable[[str], str] | None = None
    boxed_only: bool = True
    name: str = field(default="math", init=False)
    _records: list[dict[str, Any]] | None = field(default=None, init=False, repr=False)

    def records(self) -> list[dict[str, Any]]:
        """All records of the source, loaded once."""
        if self._records is None:
            source = str(self.source)
            if source.endswith(".jsonl") or Path(source).is_file():
                self._records = load_jsonl_task(
                    source, question_field=self.question_field, answer_field=self.answer_field
                )
                if self.answer_transform is not None:
                    for record in self._records:
                        record["answer"] = str(self.answer_transform(record["answer"]))
            else:
                transform = self.answer_transform
                if transform is None and "gsm8k" in source.lower():
                    transform = gsm8k_answer
                self._records = load_hf_task(
                    source,
                    self.split,
                    config=self.config,
                    question_field=self.question_field,
                    answer_field=self.answer_field,
                    answer_transform=transform,
                )
        return self._records

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        _check_n(n)
        records = self.records()
        if n > len(records):
            raise AttnRhythmError(
                f"asked for {n} examples but {self.source} has {len(records)}: ask for fewer"
            )
        chosen = random.Random(seed).sample(range(len(records)), n)
        return [{**records[i], "prompt": math_prompt(records[i]["question"])} for i in chosen]

    def reward(self, completion: str, example: dict[str, Any]) -> float:
        return math_reward(completion, _field(example, "answer", self.name), boxed_only=self.boxed_only)


TASKS: dict[str, type] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "wordproblems": WordProblemTask,
    "math": MathTask,
}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name; options are the fields of its class (e.g. ``get_task("math", source=...)``).

    ``rg:NAME[:KEY=VALUE,...]`` builds a reasoning-gym task (:func:`.gym.make_gym_task`); its
    keyword options are the dataset's config fields (and ``answer_format``).
    """
    if name.startswith("rg:"):
        return make_gym_task(name, **kwargs)
    if name not in TASKS:
        raise AttnRhythmError(
            f"unknown task '{name}': choose one of {', '.join(sorted(TASKS))}, "
            "or rg:NAME for a reasoning-gym dataset"
        )
    cls = TASKS[name]
    params = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise AttnRhythmError(
            f"task '{name}' has no option {', '.join(unknown)}: valid options are {', '.join(params)}"
        )
    if name == "math" and "source" not in kwargs:
        raise AttnRhythmError("task 'math' needs source=: a JSONL path or a Hugging Face dataset name")
    return cls(**kwargs)


__all__ = [
    "BOXED_INSTRUCTION",
    "TASKS",
    "ArithmeticTask",
    "CountdownInstance",
    "CountdownTask",
    "ExpressionError",
    "GymTask",
    "MathTask",
    "Problem",
    "Task",
    "WordProblemTask",
    "answers_match",
    "countdown_reward",
    "dataset_names",
    "evaluate",
    "extract_answer",
    "generate_countdown",
    "generate_problems",
    "get_task",
    "gsm8k_answer",
    "load_hf_task",
    "load_jsonl_task",
    "make_gym_task",
    "math_prompt",
    "math_reward",
    "normalize_answer",
    "parse_answer_tag",
    "solve",
    "verify",
]
