"""Countdown: reach a target number with + - * / over a pool of numbers (the TinyZero task).

Protocol (the defaults follow TinyZero's ``verl/utils/reward_score/countdown.py``):

* The model answers with an arithmetic expression inside ``<answer> ... </answer>``; when the
  completion has several complete blocks, the last one counts.  Pass the completion only, not
  the prompt: the prompt itself shows an example ``<answer>`` block.
* Number use: TinyZero checks that the multiset of numbers in the expression equals the pool,
  so by default (``use_all=True``) **every number must be used exactly once**.  With
  ``use_all=False`` each number may be used at most once and a subset is allowed.
* Scores: ``1.0`` for a valid expression whose exact value equals the target; ``format_score``
  (0.1) when an ``<answer>`` block is present but the expression is wrong, uses the wrong
  numbers, divides by zero or does not parse; ``0.0`` when there is no ``<answer>`` block.
  TinyZero gives the format score to unparsable answers too; ``malformed_score`` lets a caller
  score those lower.  Unlike TinyZero, values are compared exactly (``Fraction``), not within
  1e-5, and the whole completion is searched rather than only its last line.

Expression grammar (whitespace between tokens is ignored)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := "-"* atom                   # unary minus allowed; unary plus is not
    atom   := INT | "(" expr ")"
    INT    := "0" | [1-9][0-9]*             # integer literals only: no decimals, no leading zeros

Evaluation is exact with ``fractions.Fraction``, so intermediate fractions are fine
(``(8 / 3) * 3`` is 8).  Rejected, with an :class:`ExpressionError` naming the reason: empty
text, any other character (``=``, ``x``, ``×``, ``.``, letters), ``**`` and ``^``, more than
200 characters, parentheses nested deeper than 32, division by zero, and any literal or
intermediate value whose numerator or denominator exceeds 10**12 in absolute value.
No ``eval`` is involved.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from attnrhythm.errors import AttnRhythmError

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**12
MAX_DEPTH = 32

_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)

# Reasons carried by ExpressionError.reason.
EMPTY = "empty"
TOO_LONG = "too_long"
BAD_CHARACTER = "bad_character"
EXPONENT = "exponent"
SYNTAX = "syntax"
TOO_DEEP = "too_deep"
DIVISION_BY_ZERO = "division_by_zero"
TOO_LARGE = "too_large"
NUMBER_NOT_AVAILABLE = "number_not_available"
NUMBER_REUSED = "number_reused"
NUMBERS_UNUSED = "numbers_unused"

#: Reasons that mean the text is not an expression of the grammar at all.
MALFORMED_REASONS = frozenset({EMPTY, TOO_LONG, BAD_CHARACTER, EXPONENT, SYNTAX, TOO_DEEP})


class ExpressionError(ValueError):
    """An answer expression that cannot be accepted; ``reason`` is one of the module constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Tokenizer and parser


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(TOO_LONG, f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch.isascii() and ch.isdigit():
            j = i
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            literal = text[i:j]
            if len(literal) > 1 and literal[0] == "0":
                raise ExpressionError(SYNTAX, f"number with a leading zero: {literal}")
            tokens.append(literal)
            i = j
        elif ch == "*" and i + 1 < n and text[i + 1] == "*":
            raise ExpressionError(EXPONENT, "exponentiation (**) is not allowed")
        elif ch == "^":
            raise ExpressionError(EXPONENT, "exponentiation (^) is not allowed")
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        else:
            raise ExpressionError(BAD_CHARACTER, f"character {ch!r} is not allowed")
    if not tokens:
        raise ExpressionError(EMPTY, "empty expression")
    return tokens


def _check_size(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise ExpressionError(TOO_LARGE, f"a value exceeds the size limit of {MAX_MAGNITUDE}")
    return value


class _Parser:
    """Recursive descent over the token list; evaluates as it parses and records the literals."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.literals: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Fraction:
        value = self.expr()
        if self.pos != len(self.tokens):
            raise ExpressionError(SYNTAX, f"unexpected {self.tokens[self.pos]!r}")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = _check_size(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.unary()
            if op == "*":
                value = _check_size(value * right)
            else:
                if right == 0:
                    raise ExpressionError(DIVISION_BY_ZERO, "division by zero")
                value = _check_size(value / right)
        return value

    def unary(self) -> Fraction:
        negate = False
        while self.peek() == "-":
            self.take()
            negate = not negate
        value = self.atom()
        return -value if negate else value

    def atom(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise ExpressionError(SYNTAX, "expression ends too early")
        if token == "(":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(TOO_DEEP, f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expr()
            if self.peek() != ")":
                raise ExpressionError(SYNTAX, "missing closing parenthesis")
            self.take()
            self.depth -= 1
            return value
        if token[0].isdigit():
            self.take()
            number = int(token)
            self.literals.append(number)
            return _check_size(Fraction(number))
        raise ExpressionError(SYNTAX, f"unexpected {token!r}")


def _parse(expr: str) -> tuple[Fraction, list[int]]:
    parser = _Parser(_tokenize(expr))
    return parser.parse(), parser.literals


def evaluate(expr: str) -> Fraction:
    """The exact value of ``expr``; raises :class:`ExpressionError` (a ``ValueError``) with a reason."""
    return _parse(expr)[0]


def literals(expr: str) -> list[int]:
    """The integer literals of a valid expression, in order of appearance."""
    return _parse(expr)[1]


def check_numbers(used: Sequence[int], numbers: Sequence[int], *, use_all: bool = True) -> None:
    """Raise :class:`ExpressionError` unless ``used`` fits the pool ``numbers`` under the rules."""
    pool = Counter(numbers)
    for number, count in Counter(used).items():
        if number not in pool:
            raise ExpressionError(NUMBER_NOT_AVAILABLE, f"{number} is not one of the given numbers")
        if count > pool[number]:
            raise ExpressionError(NUMBER_REUSED, f"{number} is used more often than it is given")
    if use_all and Counter(used) != pool:
        missing = sorted((pool - Counter(used)).elements())
        raise ExpressionError(NUMBERS_UNUSED, f"numbers not used: {missing}")


# --------------------------------------------------------------------------------------------
# Verification and reward


@dataclass(frozen=True)
class Verdict:
    """Outcome of checking one answer expression: ``correct``, its ``value`` and a failure ``reason``."""

    correct: bool
    value: Fraction | None = None
    reason: str | None = None  # an ExpressionError reason, "wrong_value", or None when correct

    @property
    def malformed(self) -> bool:
        return self.reason in MALFORMED_REASONS


def verify(expr: str, numbers: Sequence[int], target: int, *, use_all: bool = True) -> Verdict:
    """Check an answer expression against the pool and the target (never raises on bad text)."""
    try:
        value, used = _parse(expr)
        check_numbers(used, numbers, use_all=use_all)
    except ExpressionError as err:
        return Verdict(False, None, err.reason)
    if value != target:
        return Verdict(False, value, "wrong_value")
    return Verdict(True, value, None)


def parse_answer_tag(text: str) -> str | None:
    """The stripped content of the last complete ``<answer>...</answer>`` block, or None."""
    matches = _ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def countdown_reward(
    completion: str,
    numbers: Sequence[int],
    target: int,
    *,
    format_score: float = 0.1,
    use_all: bool = True,
    malformed_score: float | None = None,
) -> float:
    """1.0 correct, ``format_score`` for a wrong answer in tags, 0.0 without an ``<answer>`` block.

    ``malformed_score`` (default: ``format_score``, as TinyZero) scores a tagged answer that does
    not parse at all (empty, other characters, ``**``, too long, unbalanced).
    """
    answer = parse_answer_tag(completion)
    if answer is None:
        return 0.0
    verdict = verify(answer, numbers, target, use_all=use_all)
    if verdict.correct:
        return 1.0
    if verdict.malformed and malformed_score is not None:
        return malformed_score
    return format_score


# --------------------------------------------------------------------------------------------
# Instances, generator and solver

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

# An expression tree: an int leaf or (op, left, right).
_Tree = int | tuple[str, "_Tree", "_Tree"]


def _render(tree: _Tree) -> str:
    """Render a tree with the fewest parentheses that keep its meaning."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    prec = _PRECEDENCE[op]
    left_text = _render(left)
    right_text = _render(right)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < prec:
        left_text = f"({left_text})"
    if not isinstance(right, int):
        right_prec = _PRECEDENCE[right[0]]
        if right_prec < prec or (right_prec == prec and op in "-/"):
            right_text = f"({right_text})"
    return f"{left_text} {op} {right_text}"


def _instruction(numbers: Sequence[int], target: int, use_all: bool) -> str:
    rule = "use every number exactly once" if use_all else "use each number at most once"
    return (
        f"Using the numbers {list(numbers)}, write an arithmetic expression whose value is {target}. "
        f"You may use +, -, *, / and parentheses; {rule}. "
        "Reason step by step inside <think> </think> tags, then put only the final expression "
        "inside <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
    )


@dataclass(frozen=True)
class CountdownInstance:
    """A solvable Countdown puzzle: ``numbers``, ``target`` and a ``witness`` expression reaching it."""

    id: str
    numbers: tuple[int, ...]
    target: int
    witness: str

    def prompt(self, *, use_all: bool = True) -> str:
        """The instruction text asking for the expression in ``<answer>`` tags."""
        return _instruction(self.numbers, self.target, use_all)

    def reward(self, completion: str, **options: Any) -> float:
        """:func:`countdown_reward` of a completion on this instance (same keyword options)."""
        return countdown_reward(completion, self.numbers, self.target, **options)


def _random_tree(rng: random.Random, numbers: list[int]) -> tuple[_Tree, int] | None:
    """Combine all numbers pairwise into one tree whose intermediate values are positive integers."""
    items: list[tuple[_Tree, int]] = [(n, n) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (ta, a), (tb, b) = items[i], items[j]
        options: list[tuple[_Tree, int]] = [(("+", ta, tb), a + b), (("*", ta, tb), a * b)]
        if a > b:
            options.append((("-", ta, tb), a - b))
        if b > 1 and a % b == 0:
            options.append((("/", ta, tb), a // b))
        tree, value = rng.choice(options)
        if value > MAX_MAGNITUDE:
            return None
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [(tree, value)]
    return items[0]


def _check_range(name: str, pair: tuple[int, int], low: int, high: int | None = None) -> tuple[int, int]:
    lo, hi = pair
    if lo > hi or lo < low or (high is not None and hi > high):
        bound = f"{low} <= low <= high" + (f" <= {high}" if high is not None else "")
        raise AttnRhythmError(f"{name}={pair} is not a valid range: pass (low, high) with {bound}")
    return lo, hi


def generate_countdown(
    n: int,
    seed: int = 0,
    *,
    n_numbers: tuple[int, int] = (3, 4),
    max_number: int = 100,
    target_range: tuple[int, int] = (1, 100),
) -> list[CountdownInstance]:
    """``n`` distinct solvable instances, deterministic for ``seed``.

    Each instance samples 1..``max_number`` numbers (their count uniform in ``n_numbers``),
    combines all of them into a random expression tree with positive integer intermediate
    values, and keeps it when the value lies in ``target_range``; the tree is the witness.
    """
    if n < 0:
        raise AttnRhythmError(f"n={n} is negative: ask for zero or more instances")
    lo_k, hi_k = _check_range("n_numbers", n_numbers, 2, 6)
    lo_t, hi_t = _check_range("target_range", target_range, 0)
    if max_number < 1:
        raise AttnRhythmError(f"max_number={max_number} must be at least 1")
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    out: list[CountdownInstance] = []
    failures = 0
    while len(out) < n:
        numbers = [rng.randint(1, max_number) for _ in range(rng.randint(lo_k, hi_k))]
        made = _random_tree(rng, numbers)
        if made is None or not lo_t <= made[1] <= hi_t or (tuple(sorted(numbers)), made[1]) in seen:
            failures += 1
            if failures > 2000 + 200 * n:
                raise AttnRhythmError(
                    f"could not generate {n} distinct instances with target_range={target_range}: "
                    "widen target_range or max_number, or ask for fewer"
                )
            continue
        tree, target = made
        seen.add((tuple(sorted(numbers)), target))
        out.append(
            CountdownInstance(f"countdown-{seed}-{len(out):05d}", tuple(numbers), target, _render(tree))
        )
    return out


def solve(numbers: Sequence[int], target: int, *, use_all: bool = True) -> str | None:
    """An expression over ``numbers`` equal to ``target`` (exhaustive search), or None.

    Tries every way to merge two values with + - * / (fractions and negatives included, as the
    verifier accepts them), remembering dead ends; practical up to 5-6 numbers.
    """
    goal = Fraction(target)
    start = tuple(sorted(Fraction(x) for x in numbers))
    plan = _search(start, goal, use_all, {})
    if plan is None:
        return None
    # Replay the plan (index pairs into the sorted values, and an op) to build the tree.
    items: list[tuple[Fraction, _Tree]] = [(value, int(value)) for value in start]
    for i, j, op in plan:
        (a, ta), (b, tb) = items[i], items[j]
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [
            (_combine(op, a, b), (op, ta, tb))
        ]
        items.sort(key=lambda item: item[0])
    return _render(next(tree for value, tree in reversed(items) if value == goal))


def _combine(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


_Plan = tuple[tuple[int, int, str], ...]


def _search(
    values: tuple[Fraction, ...], goal: Fraction, use_all: bool, dead: dict[tuple[Fraction, ...], None]
) -> _Plan | None:
    """A plan of merges reaching ``goal`` from the sorted ``values``; ``dead`` memoises failures."""
    if goal in values and (len(values) == 1 or not use_all):
        return ()
    if len(values) == 1 or values in dead:
        return None
    for i in range(len(values)):
        for j in range(len(values)):
            if i == j:
                continue
            a, b = values[i], values[j]
            for op in "+-*/":
                if (op in "+*" and i > j) or (op == "/" and b == 0):
                    continue  # commutative ops: each unordered pair once
                value = _combine(op, a, b)
                if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
                    continue
                rest = tuple(sorted([v for k, v in enumerate(values) if k not in (i, j)] + [value]))
                plan = _search(rest, goal, use_all, dead)
                if plan is not None:
                    return ((i, j, op), *plan)
    dead[values] = None
    return None
