"""Arithmetic: evaluate a short integer expression such as ``17 + 8 - 5`` (an easy RL task).

Made for small models (SmolLM2-135M-Instruct solves Countdown and the word problems almost never,
which gives GRPO no signal). Each example is a left-to-right chain of ``n_terms`` integers in
``[min_operand, max_operand]`` joined by operators drawn from ``ops`` (``+``, ``-``, ``*``),
evaluated with the usual precedence (``*`` before ``+``/``-``); the answer is an integer (it may be
negative when ``-`` is allowed). Examples are distinct and deterministic for a seed.

The prompt asks for the final answer in ``\\boxed{}``. The reward is exact and binary:
:func:`~attnrhythm.tasks.mathcheck.math_reward` of the completion against the integer answer, with
``boxed_only=True`` by default (the last ``\\boxed{}`` counts); ``boxed_only=False`` also accepts
"the answer is N" or, failing that, the last number of the completion.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks.mathcheck import math_reward

_INSTRUCTION = "Put the final answer in \\boxed{}."


def _value(terms: list[int], ops: list[str]) -> int:
    # precedence: fold the products first, then add/subtract left to right
    sums: list[int] = [terms[0]]
    signs: list[str] = []
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            sums[-1] *= term
        else:
            signs.append(op)
            sums.append(term)
    total = sums[0]
    for op, term in zip(signs, sums[1:]):
        total = total + term if op == "+" else total - term
    return total


@dataclass
class ArithmeticTask:
    """Evaluate ``a op b [op c ...]``; reward 1.0 for the exact integer in ``\\boxed{}``, else 0.0."""

    n_terms: tuple[int, int] = (2, 2)
    min_operand: int = 1
    max_operand: int = 50  # 2 terms in 1..50 with + and -: 5000 distinct expressions (training draws 1000)
    ops: str = "+-"
    boxed_only: bool = True
    name: str = field(default="arithmetic", init=False)

    def __post_init__(self) -> None:
        lo, hi = tuple(self.n_terms)
        if not 2 <= lo <= hi <= 6:
            raise AttnRhythmError(
                f"n_terms={self.n_terms} is not a valid range: pass (low, high) with 2 <= low <= high <= 6"
            )
        if not 0 <= self.min_operand <= self.max_operand:
            raise AttnRhythmError(
                f"bad operand range {self.min_operand}..{self.max_operand}: need 0 <= min <= max"
            )
        if not self.ops or any(op not in "+-*" for op in self.ops):
            raise AttnRhythmError(f"bad ops {self.ops!r}: use a string of +, - and *")
        self.n_terms = (lo, hi)

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        if n < 0:
            raise AttnRhythmError(f"n={n} is negative: ask for zero or more examples")
        if n > self.capacity():
            raise AttnRhythmError(
                f"the arithmetic task has only {self.capacity()} distinct expressions with n_terms="
                f"{list(self.n_terms)}, operands {self.min_operand}..{self.max_operand} and ops "
                f"{self.ops!r}: "
                "ask for at most that many (--n-train) or widen them (--task-option max_operand=100)"
            )
        rng = random.Random(seed)
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        failures = 0
        while len(out) < n:
            count = rng.randint(*self.n_terms)
            terms = [rng.randint(self.min_operand, self.max_operand) for _ in range(count)]
            ops = [rng.choice(self.ops) for _ in range(count - 1)]
            expression = " ".join([str(terms[0])] + [f"{op} {t}" for op, t in zip(ops, terms[1:])])
            if expression in seen:
                failures += 1
                if failures > 1000 + 100 * n:
                    raise AttnRhythmError(
                        f"could not generate {n} distinct expressions: widen the operands or ask for fewer"
                    )
                continue
            seen.add(expression)
            answer = _value(terms, ops)
            out.append(
                {
                    "id": f"arithmetic-{seed}-{len(out):05d}",
                    "prompt": f"What is {expression}? {_INSTRUCTION}",
                    "expression": expression,
                    "answer": str(answer),
                }
            )
        return out

    def capacity(self) -> int:
        """How many distinct expressions these options allow."""
        values = self.max_operand - self.min_operand + 1
        return sum(
            values**count * len(set(self.ops)) ** (count - 1)
            for count in range(self.n_terms[0], self.n_terms[1] + 1)
        )

    def reward(self, completion: str, example: dict[str, Any]) -> float:
        if "answer" not in example:
            raise AttnRhythmError(
                "example has no 'answer' field: pass an example made by the arithmetic task's examples()"
            )
        return math_reward(completion, example["answer"], boxed_only=self.boxed_only)
