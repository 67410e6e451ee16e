"""Final-answer extraction and checking for math answers: our exact rules plus math-verify.

Extraction order (:func:`extract_answer`):

1. the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed) or ``\\boxed 5``;
2. unless ``boxed_only``: the first number after the last GSM8K ``####`` marker, else after the
   last "answer is" / "answer:" phrase, else the last number in the text.  Numbers include
   ``1,234``, ``-3.5``, ``$26``, ``25%``, ``3/4`` and ``\\frac{3}{4}`` (``\\dfrac``, ``\\tfrac``).

Comparison (:func:`answers_match`), in this order:

1. both sides are normalised (:func:`normalize_answer`: LaTeX spacing, ``\\text{}``, dollar
   signs, thousands commas, a trailing period, ``%`` and trailing units/words are dropped); when
   the reference is a number, the prediction must be a number equal to it **exactly** as a
   ``Fraction`` (so ``0.5 == 1/2 == \\frac{1}{2}`` and ``25% == 25``, but ``0.333333 != 1/3``,
   and an unevaluated ``17 + 8`` or ``\\sqrt{4}`` is not the answer ``25`` or ``2``: copying the
   question's expression into the box earns nothing);
2. equal normalised strings match (``Monday`` and ``\\text{monday}``);
3. for a reference that is not a plain number, the rest is left to math-verify
   (https://github.com/huggingface/Math-Verify, Hugging Face's answer-equivalence checker, the
   one TRL and open-r1 use): both sides are parsed as LaTeX (wrapped in ``$...$``) and compared
   symbolically, which covers radicals and other expressions
   (``\\frac{\\sqrt{2}}{2} == \\frac{1}{\\sqrt{2}}``, ``2\\sqrt{3} == \\sqrt{12}``, ``x+1 == 1+x``),
   ``\\pi``, sets and intervals.  Answers longer than :data:`VERIFY_MAX_CHARS` are not handed to it.
   Without math-verify installed (the ``tasks`` extra) this step is skipped.

Rules we keep because math-verify does not cover them: the extraction order above (math-verify's
own extraction ranks "final answer is" phrases, boxes and trailing expressions by its own
priorities, with no box-only mode and no GSM8K ``####`` marker); exact rational equality of
numbers (math-verify compares numbers after rounding, so ``0.333333`` equals ``1/3`` there, and
it evaluates expressions, so ``17 + 8`` equals ``25`` there); GSM8K-style clean-up of units,
currency, thousands separators and ``x = 5``; case-insensitive comparison of plain words.
"""

from __future__ import annotations

import importlib
import re
import threading
from fractions import Fraction
from typing import Any

BOXED_INSTRUCTION = "Solve the problem step by step, then write the final answer as \\boxed{answer}."

#: The longest answer (characters, each side) handed to math-verify.
VERIFY_MAX_CHARS = 256
#: math-verify's parse and compare time limits in seconds (main thread only, see :func:`symbolic_match`).
VERIFY_TIMEOUT_S = 3

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

# A plain number: optional sign and dollar sign, digits with optional thousands commas or a
# decimal part, an optional percent sign.  The sign must not follow a word or digit ("5-3").
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    r"\\[dt]?frac\s*\{\s*-?\s*(?:" + _NUM + r")\s*\}\s*\{\s*-?\s*(?:" + _NUM + r")\s*\}"
    r"|(?<![\w.\\])-?\s?\\?\$?\s?(?:" + _NUM + r")(?:\s*/\s*(?:" + _NUM + r"))?(?:\s?\\?%)?"
)
_BARE_BOX_RE = re.compile(r"-?[\w.,/\\%]*\w[%]?")
_ANSWER_PHRASE_RE = re.compile(r"answer\s*(?:is|:|=)|####", re.IGNORECASE)

_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\left|\\right|\\displaystyle")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])")
_SPACED_THOUSANDS_RE = re.compile(r"(?<=\d) (?=\d{3}(?!\d))")
_NUMERIC_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+))?")


def math_prompt(question: str) -> str:
    """The prompt for a question whose answer is checked from ``\\boxed{}``."""
    return f"{question.strip()}\n\n{BOXED_INSTRUCTION}"


def _box_contents(text: str) -> list[str]:
    """Contents of every well-formed box, in order (an unclosed brace is skipped)."""
    found: list[str] = []
    for match in _BOX_RE.finditer(text):
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        found.append(text[i + 1 : j])
                        break
                j += 1
        else:  # "\boxed 5": the next token
            token = _BARE_BOX_RE.match(text, i)
            if token:
                found.append(token.group(0))
    return found


def extract_answer(text: str, *, boxed_only: bool = False) -> str | None:
    """The final answer text of a completion (raw, not normalised), or None when there is none."""
    boxes = [box for box in _box_contents(text) if box.strip()]
    if boxes:
        return boxes[-1].strip()
    if boxed_only:
        return None
    phrases = list(_ANSWER_PHRASE_RE.finditer(text))
    if phrases:
        number = _NUMBER_RE.search(text, phrases[-1].end())
        if number:
            return number.group(0).strip()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


def _strip_units(s: str) -> str:
    """'26 apples' -> '26', '5 cm^2' -> '5'; leaves non-numeric text alone."""
    match = _NUMERIC_RE.match(s)
    if match and match.end() < len(s):
        rest = s[match.end() :].strip()
        if re.fullmatch(r"[A-Za-z][A-Za-z\s.^\d/²³]*", rest):
            return match.group(0)
    return s


def normalize_answer(s: str) -> str:
    """A canonical form: numbers as ``26`` or reduced ``-7/2``; other text lowercased and trimmed."""
    t = str(s).strip()
    boxes = [box for box in _box_contents(t) if box.strip()]
    if boxes:  # a whole "\boxed{...}" passed in: its content is the answer
        t = boxes[-1].strip()
    for _ in range(3):
        t = _LATEX_WRAPPERS.sub(r"\1", t)
    t = _FRAC_RE.sub(r"(\1)/(\2)", t)
    t = _FRAC_SHORT_RE.sub(r"\1/\2", t)
    t = _LATEX_SPACES.sub(" ", t)
    t = t.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("$", "")
    t = t.replace("−", "-")
    t = _THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), t)
    t = _SPACED_THOUSANDS_RE.sub("", t)  # "12\,000" -> "12 000" -> "12000"
    t = " ".join(t.split()).strip()
    t = re.sub(r"^[A-Za-z]\s*=\s*", "", t)  # "x = 5" -> "5"
    t = t.rstrip(".").strip()
    if t.endswith("%"):
        t = t[:-1].strip()
    t = re.sub(r"\(\s*([-+]?[\d.]+)\s*\)", r"\1", t)  # "(3)/(4)" -> "3/4"
    t = _strip_units(t)
    value = _to_fraction(t)
    if value is not None:
        return _format_number(value)
    return t.lower()


def _to_fraction(s: str) -> Fraction | None:
    s = re.sub(r"\s*/\s*", "/", s.strip())
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/[-+]?(?:\d+(?:\.\d*)?|\.\d+))?", s):
        return None
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _format_number(value: Fraction) -> str:
    """``26`` for integers, else the reduced ``p/q`` (``-7/2``)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _reference_value(reference: str | int | float | Fraction) -> tuple[str, Fraction | None]:
    """(normalised text, exact value or None) of a reference answer."""
    if isinstance(reference, (int, Fraction)) and not isinstance(reference, bool):
        value = Fraction(reference)
        return _format_number(value), value
    if isinstance(reference, float):
        if reference != reference or reference in (float("inf"), float("-inf")):
            return "", None
        value = Fraction(repr(reference))  # the shortest decimal that round-trips: 0.1 -> 1/10
        return _format_number(value), value
    text = normalize_answer(str(reference))
    return text, _to_fraction(text)


_MATH_VERIFY: Any = None


def _math_verify() -> Any:
    """The math_verify module, or False when it is not installed (looked up once)."""
    global _MATH_VERIFY
    if _MATH_VERIFY is None:
        try:
            _MATH_VERIFY = importlib.import_module("math_verify")
        except ImportError:
            _MATH_VERIFY = False
    return _MATH_VERIFY


def symbolic_match(predicted: str, reference: str) -> bool | None:
    """math-verify's verdict on two answers as LaTeX, or None when it is not installed.

    Its time limits use ``signal.alarm``, which only the main thread may set; in other threads
    (a data loader, a server) it runs without them, as math-verify advises.
    """
    mv = _math_verify()
    if not mv:
        return None
    if len(predicted) > VERIFY_MAX_CHARS or len(reference) > VERIFY_MAX_CHARS:
        return False
    limit = VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = mv.parse(f"${reference}$", parsing_timeout=limit)
        pred = mv.parse(f"${predicted}$", parsing_timeout=limit)
        return bool(gold and pred and mv.verify(gold, pred, timeout_seconds=limit))
    except Exception:  # a parser or sympy failure on odd text: no match
        return False


def answers_match(predicted: str | None, reference: str | int | float | Fraction) -> bool:
    """Exact numeric equality for a numeric reference, else equal normalised text, else
    math-verify's symbolic equivalence (see the module docstring)."""
    if predicted is None:
        return False
    pred = normalize_answer(predicted)
    ref, ref_value = _reference_value(reference)
    if not pred or not ref:
        return False
    if ref_value is not None:  # a numeric reference: only an equal number matches
        pred_value = _to_fraction(pred)
        return pred_value == ref_value if pred_value is not None else pred == ref
    if pred == ref:
        return True
    raw_ref = ref if isinstance(reference, (int, float, Fraction)) else str(reference).strip()
    return bool(symbolic_match(predicted.strip(), raw_ref))


def math_reward(
    completion: str, reference: str | int | float | Fraction, *, boxed_only: bool = False
) -> float:
    """1.0 when the completion's final answer matches ``reference``, else 0.0."""
    return 1.0 if answers_match(extract_answer(completion, boxed_only=boxed_only), reference) else 0.0
