"""Verifiable tasks: word-problem generator, answer checking, Countdown verifier, loaders, registry."""

from __future__ import annotations

import json
import os
import re
import sys
import types
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks import (
    TASKS,
    MathTask,
    Task,
    get_task,
    math_prompt,
)
from attnrhythm.tasks import countdown as cd
from attnrhythm.tasks.countdown import (
    ExpressionError,
    countdown_reward,
    evaluate,
    generate_countdown,
    literals,
    parse_answer_tag,
    solve,
    verify,
)
from attnrhythm.tasks.datasets import gsm8k_answer, load_hf_task, load_jsonl_task
from attnrhythm.tasks.mathcheck import answers_match, extract_answer, math_reward, normalize_answer
from attnrhythm.tasks.wordproblems import Problem, generate_problems, template_names

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ============================================================================================
# Word problems

_STEP_LINE = re.compile(r"^(\d+)\. ([^:]+): (.+) = (\d+)$")


def _check_solution(problem: Problem) -> None:
    """Every step's expression evaluates to its stated value; the last value is the boxed answer."""
    lines = problem.solution.splitlines()
    assert lines[-1] == f"The answer is \\boxed{{{problem.answer_text}}}."
    steps = lines[:-1]
    assert len(steps) == problem.steps
    value = None
    for index, line in enumerate(steps, 1):
        match = _STEP_LINE.match(line)
        assert match, line
        assert int(match.group(1)) == index
        expr = match.group(3).replace("×", "*").replace("÷", "/")
        value = int(match.group(4))
        assert evaluate(expr) == value, line
        assert 0 <= value <= 1_000_000
    assert value == problem.answer
    boxed = extract_answer(problem.solution, boxed_only=True)
    assert answers_match(boxed, problem.answer)
    assert Fraction(normalize_answer(boxed)) == problem.answer


def test_wordproblems_deterministic_and_seed_dependent():
    a = generate_problems(40, seed=3)
    assert a == generate_problems(40, seed=3)
    assert [p.question for p in a] != [p.question for p in generate_problems(40, seed=4)]
    assert generate_problems(10, seed=3) == a[:10]


def test_wordproblems_diversity_and_fields():
    problems = generate_problems(200, seed=0)
    templates = Counter(p.template for p in problems)
    assert len(templates) >= 12
    assert set(templates) <= set(template_names()) and len(template_names()) >= 12
    assert {p.steps for p in problems} == {2, 3, 4, 5}
    assert len({p.id for p in problems}) == 200
    assert len({p.question for p in problems}) == 200
    names_used = {name for p in problems for name in re.findall(r"\b[A-Z][a-z]+\b", p.question)}
    assert len(names_used) > 30  # names, objects and phrasings vary
    for p in problems:
        assert isinstance(p.answer, int) and p.answer >= 0
        assert p.question.endswith("?") or p.question.endswith(")")
        assert not re.search(r"\b1 [a-z]+s\b|  ", p.question), p.question  # "1 hours", double spaces
        _check_solution(p)


@FAST
@given(seed=st.integers(0, 10**9))
def test_wordproblems_solutions_are_exact_for_any_seed(seed):
    for p in generate_problems(8, seed=seed):
        _check_solution(p)


@pytest.mark.parametrize("steps", [(2, 2), (3, 4), (5, 5)])
def test_wordproblems_steps_filter(steps):
    problems = generate_problems(30, seed=1, steps=steps)
    assert all(steps[0] <= p.steps <= steps[1] for p in problems)
    if steps == (5, 5):
        assert len({p.template for p in problems}) >= 4


@pytest.mark.parametrize("steps", [(1, 3), (4, 2), (2, 6)])
def test_wordproblems_bad_steps(steps):
    with pytest.raises(AttnRhythmError, match="steps="):
        generate_problems(3, steps=steps)


def test_wordproblems_edge_counts():
    assert generate_problems(0) == []
    with pytest.raises(AttnRhythmError, match="negative"):
        generate_problems(-1)
    problem = generate_problems(1)[0]
    with pytest.raises(AttributeError):
        problem.answer = 3  # type: ignore[misc]  # frozen


# ============================================================================================
# Answer extraction and checking


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 26.", "26"),
        ("Adding up, = 1,234", "1234"),
        ("It costs $26", "26"),
        ("She has 26 apples", "26"),
        ("The temperature is -3.5", "-7/2"),
        ("so the share is 3/4", "3/4"),
        (r"which gives $\frac{3}{4}$", "3/4"),
        (r"which gives $\dfrac{3}{4}$", "3/4"),
        (r"which gives $\tfrac{1}{2}$", "1/2"),
        ("The discount is 25%", "25"),
        (r"\boxed{42}", "42"),
        (r"\boxed{\frac{1}{2}} first, then finally \boxed{42}", "42"),
        (r"\boxed{\frac{3}{4}}", "3/4"),
        (r"\boxed{\text{26 apples}}", "26"),
        (r"\boxed{26 \text{ apples}}", "26"),
        (r"\boxed{\$1{,}234.00}", "1234"),
        (r"\boxed{12\,000}", "12000"),
        (r"\boxed{3 4}", "3 4"),
        (r"\boxed{1,000,000}", "1000000"),
        (r"\boxed 5", "5"),
        (r"\boxed{26.0}", "26"),
        (r"\fbox{7}", "7"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{-3}", "-3"),
        (r"\boxed{\text{Monday}}", "monday"),
        ("#### 72", "72"),
        ("5 - 3 = 2 and then the total is 10", "10"),
    ],
)
def test_extract_and_normalize(text, expected):
    assert normalize_answer(extract_answer(text)) == expected


def test_extract_last_box_nested_and_missing():
    assert extract_answer(r"\boxed{1} ... \boxed{\frac{2}{\sqrt{4}}}") == r"\frac{2}{\sqrt{4}}"
    assert extract_answer(r"a \boxed{3} and an unclosed \boxed{4", boxed_only=True) == "3"
    assert extract_answer("The answer is 12.", boxed_only=True) is None
    assert extract_answer("no numbers here") is None
    assert extract_answer(r"\boxed{}  so 9") == "9"
    assert extract_answer("I think the answer is 5; the other 7 was a typo") == "5"


@pytest.mark.parametrize(
    ("predicted", "reference", "ok"),
    [
        ("26", 26, True),
        ("26.0", 26, True),
        ("26.50", Fraction(53, 2), True),
        (r"\frac{1}{2}", 0.5, True),
        ("0.1", 0.1, True),
        ("1,234", "1234", True),
        ("$1,234", 1234, True),
        ("25%", 25, True),
        ("-3", -3, True),
        ("-3", 3, False),
        ("3/4", Fraction(3, 4), True),
        ("0.75", "3/4", True),
        ("27", 26, False),
        ("12,3", 123, False),
        ("Monday", r"\text{monday}", True),
        ("Monday.", "Tuesday", False),
        (None, 5, False),
        ("", 5, False),
        ("5", "", False),
        ("1/0", "1/0", True),  # not a number: plain string equality
    ],
)
def test_answers_match(predicted, reference, ok):
    assert answers_match(predicted, reference) is ok


def test_math_reward():
    assert math_reward(r"... so \boxed{18}", 18) == 1.0
    assert math_reward(r"... so \boxed{17}", 18) == 0.0
    assert math_reward("The answer is 18", 18) == 1.0
    assert math_reward("The answer is 18", 18, boxed_only=True) == 0.0
    assert math_reward(r"\boxed{18} wait, no: \boxed{19}", 18) == 0.0


@FAST
@given(n=st.integers(-(10**9), 10**9))
def test_integer_formats_match(n):
    for text in (f"{n:,}", f"\\boxed{{{n}}}", f"The answer is {n}.", f"${n}" if n >= 0 else f"{n}", f"{n}.0"):
        assert answers_match(extract_answer(text), n), text
    assert not answers_match(str(n + 1), n)


@FAST
@given(p=st.integers(-1000, 1000), q=st.integers(1, 1000))
def test_fraction_formats_match(p, q):
    value = Fraction(p, q)
    assert answers_match(f"\\boxed{{\\frac{{{p}}}{{{q}}}}}", value)
    assert answers_match(extract_answer(f"the result is {p}/{q}"), value)
    normal = normalize_answer(f"{p}/{q}")
    assert normalize_answer(normal) == normal
    assert Fraction(normal) == value


# ============================================================================================
# Countdown: parser and evaluator


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("100 / 10 / 5", 2),
        ("(8 / 3) * 3", 8),
        ("8 / 3", Fraction(8, 3)),
        ("-(3 - 5)", 2),
        ("4 - -2", 6),
        (" \n( 7 )\t", 7),
        ("0", 0),
    ],
)
def test_evaluate(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", cd.EMPTY),
        ("   ", cd.EMPTY),
        ("2 ** 3", cd.EXPONENT),
        ("2 ^ 3", cd.EXPONENT),
        ("1 +", cd.SYNTAX),
        ("(1 + 2", cd.SYNTAX),
        ("1 + 2)", cd.SYNTAX),
        ("1 2", cd.SYNTAX),
        ("()", cd.SYNTAX),
        ("+3", cd.SYNTAX),
        ("05 + 1", cd.SYNTAX),
        ("3 * / 2", cd.SYNTAX),
        ("1 + x", cd.BAD_CHARACTER),
        ("3 = 3", cd.BAD_CHARACTER),
        ("1.5 * 2", cd.BAD_CHARACTER),
        ("2 × 3", cd.BAD_CHARACTER),
        ("__import__('os')", cd.BAD_CHARACTER),
        ("1 / 0", cd.DIVISION_BY_ZERO),
        ("5 / (2 - 2)", cd.DIVISION_BY_ZERO),
        ("1" * 13, cd.TOO_LARGE),
        ("999999 * 999999 * 999999", cd.TOO_LARGE),
        ("1 / 999999 / 999999 / 7", cd.TOO_LARGE),
        ("1 + " * 60 + "1", cd.TOO_LONG),
        ("(" * 40 + "1" + ")" * 40, cd.TOO_DEEP),
    ],
)
def test_evaluate_rejects(expr, reason):
    with pytest.raises(ExpressionError) as info:
        evaluate(expr)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_deep_unary_minus_is_iterative():
    assert evaluate("-" * 150 + "5") == 5
    assert evaluate("-" * 151 + "5") == -5


@FAST
@given(text=st.text(alphabet="0123456789+-*/() x.^", max_size=60))
def test_evaluate_never_raises_other_errors(text):
    try:
        value = evaluate(text)
    except ExpressionError:
        return
    assert isinstance(value, Fraction)


@FAST
@given(text=st.text(max_size=300))
def test_reward_total_on_arbitrary_text(text):
    assert countdown_reward(text, [1, 2, 3], 6) in (0.0, 0.1, 1.0)
    assert countdown_reward(f"<answer>{text}</answer>", [1, 2, 3], 6) in (0.1, 1.0)


# ============================================================================================
# Countdown: answer tags, verification and reward


def test_parse_answer_tag():
    assert parse_answer_tag("no tag here") is None
    assert parse_answer_tag("<answer> 1 + 2 </answer>") == "1 + 2"
    assert parse_answer_tag("<answer>1</answer> then <answer>\n 2 * 3 \n</answer>") == "2 * 3"
    assert parse_answer_tag("<answer>1+2</answer> and an unclosed <answer>3") == "1+2"
    assert parse_answer_tag("<answer><answer>4</answer>") == "4"
    assert parse_answer_tag("<answer></answer>") == ""


def test_countdown_reward_scores():
    nums, target = [3, 5, 2], 16
    assert countdown_reward("<think>hmm</think><answer>(3 + 5) * 2</answer>", nums, target) == 1.0
    assert countdown_reward("<answer>(3 + 5) * 2</answer>", nums, target, format_score=0.2) == 1.0
    assert countdown_reward("(3 + 5) * 2 = 16", nums, target) == 0.0  # no tag
    assert countdown_reward("<answer>3 + 5 + 2</answer>", nums, target) == 0.1  # wrong value
    assert countdown_reward("<answer>3 + 5 + 2</answer>", nums, target, format_score=0.0) == 0.0
    assert countdown_reward("<answer>(5 + 3) * 2 * 1</answer>", nums, target) == 0.1  # 1 not in pool
    assert countdown_reward("<answer>(3 + 5) * 2 + 2 - 2</answer>", nums, target) == 0.1  # 2 reused
    assert countdown_reward("<answer>(3 + 5) * 2 ** 1</answer>", nums, target) == 0.1  # exponent
    assert countdown_reward("<answer></answer>", nums, target) == 0.1  # TinyZero: tag present
    assert countdown_reward("<answer></answer>", nums, target, malformed_score=0.0) == 0.0
    assert countdown_reward("<answer>3 / (5 - 5)</answer>", nums, target, malformed_score=0.0) == 0.1
    # last tag wins, both ways
    assert countdown_reward("<answer>3+5+2</answer> <answer>(3+5)*2</answer>", nums, target) == 1.0
    assert countdown_reward("<answer>(3+5)*2</answer> <answer>3+5+2</answer>", nums, target) == 0.1
    assert countdown_reward("<answer>\n  ( 3+5 )\n*2  </answer>", nums, target) == 1.0


def test_countdown_number_rules():
    # TinyZero default: every number exactly once
    assert not verify("8 * 2", [3, 5, 2, 8], 16).correct
    assert verify("8 * 2", [3, 5, 2, 8], 16).reason == cd.NUMBERS_UNUSED
    assert verify("8 * 2", [3, 5, 2, 8], 16, use_all=False).correct
    assert countdown_reward("<answer>8 * 2</answer>", [3, 5, 2, 8], 16, use_all=False) == 1.0
    # duplicates in the pool may each be used once
    assert verify("4 * 4 + 4", [4, 4, 4], 20).correct
    assert verify("4 * 4 + 4 + 4", [4, 4, 4], 24).reason == cd.NUMBER_REUSED
    assert verify("4 * 5", [4, 4, 4], 20, use_all=False).reason == cd.NUMBER_NOT_AVAILABLE
    # exact fractions: (8 / 3) * 3 is 8
    assert verify("(8 / 3) * 3", [8, 3, 3], 8).correct
    assert countdown_reward("<answer>8 / 3 * 3</answer>", [3, 8, 3], 8) == 1.0
    assert verify("8 / 3", [8, 3], 3).reason == "wrong_value"
    assert verify("-(3 - 5) * 4", [3, 5, 4], 8).correct  # unary minus is allowed
    assert literals("12 + (3 * 12)") == [12, 3, 12]


def test_countdown_reward_ignores_prompt_example_only_when_completion_has_a_tag():
    inst = generate_countdown(1, seed=5)[0]
    prompt = inst.prompt()
    assert "<answer>" in prompt and str(inst.target) in prompt and str(list(inst.numbers)) in prompt
    # a completion with its own tag wins over the prompt's example; pass the completion only
    good = f"<answer>{inst.witness}</answer>"
    assert countdown_reward(prompt + good, inst.numbers, inst.target) == 1.0
    assert countdown_reward(prompt, inst.numbers, inst.target) == 0.1


# ============================================================================================
# Countdown: generator and solver


def test_generate_countdown_instances_are_valid_and_solvable():
    instances = generate_countdown(120, seed=0)
    assert instances == generate_countdown(120, seed=0)
    assert instances != generate_countdown(120, seed=1)
    assert len({i.id for i in instances}) == 120
    assert len({(tuple(sorted(i.numbers)), i.target) for i in instances}) == 120
    sizes = Counter(len(i.numbers) for i in instances)
    assert set(sizes) == {3, 4}
    for inst in instances:
        assert 1 <= inst.target <= 100 and all(1 <= x <= 100 for x in inst.numbers)
        assert verify(inst.witness, inst.numbers, inst.target).correct
        assert sorted(literals(inst.witness)) == sorted(inst.numbers)
        assert inst.reward(f"<think>x</think> <answer>{inst.witness}</answer>") == 1.0
    for inst in instances[:40]:
        found = solve(inst.numbers, inst.target)
        assert found is not None and verify(found, inst.numbers, inst.target).correct


def test_generate_countdown_options():
    instances = generate_countdown(30, seed=2, n_numbers=(5, 5), max_number=20, target_range=(50, 60))
    for inst in instances:
        assert len(inst.numbers) == 5 and 50 <= inst.target <= 60
        assert verify(inst.witness, inst.numbers, inst.target).correct
    assert generate_countdown(0) == []
    bad = ({"n_numbers": (1, 3)}, {"n_numbers": (4, 3)}, {"target_range": (10, 5)}, {"max_number": 0})
    for kwargs in bad:
        with pytest.raises(AttnRhythmError):
            generate_countdown(3, **kwargs)
    with pytest.raises(AttnRhythmError, match="widen"):
        generate_countdown(5, n_numbers=(2, 2), max_number=2, target_range=(50, 60))


def test_solve():
    assert solve([1, 1, 1], 100) is None
    assert solve([4, 7, 2], 14, use_all=False) is not None
    assert solve([25, 5], 5, use_all=False) == "5"
    expr = solve([8, 3, 3], 8)
    assert expr is not None and verify(expr, [8, 3, 3], 8).correct
    expr = solve([1, 5, 5, 5], 24)  # needs a fraction: 5 * (5 - 1 / 5)
    assert expr is not None and verify(expr, [1, 5, 5, 5], 24).correct


@settings(max_examples=40, deadline=None)
@given(numbers=st.lists(st.integers(1, 12), min_size=2, max_size=4), target=st.integers(0, 60))
def test_solve_answers_verify(numbers, target):
    for use_all in (True, False):
        expr = solve(numbers, target, use_all=use_all)
        if expr is not None:
            assert verify(expr, numbers, target, use_all=use_all).correct


# ============================================================================================
# Loaders


def test_gsm8k_answer():
    assert gsm8k_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gsm8k_answer("... #### 1,234 ") == "1234"
    assert gsm8k_answer(" 15 ") == "15"


def test_load_jsonl_task(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": "1+1?", "answer": 2, "id": "a"}, {"question": "2+2?", "answer": "4"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert load_jsonl_task(path) == [
        {"id": "a", "question": "1+1?", "answer": "2"},
        {"id": "qa-3", "question": "2+2?", "answer": "4"},
    ]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"problem": "p", "solution": "s"}) + "\n")
    assert load_jsonl_task(other, question_field="problem", answer_field="solution")[0]["answer"] == "s"


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"question": "q", "answer": 1}\n{"question": "q2", oops}\n', "line 2 is not valid JSON"),
        ("[1, 2]\n", "line 1 is not a JSON object"),
        ('{"question": "q"}\n', "line 1 has no field 'answer' .*answer_field="),
        ('{"prompt": "q", "answer": 1}\n', "no field 'question' \\(fields: answer, prompt\\)"),
        ("\n\n", "has no examples"),
    ],
)
def test_load_jsonl_task_errors(tmp_path, content, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(AttnRhythmError, match=pattern) as info:
        load_jsonl_task(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b'{"question": "q", "answer": 1}\n{"question": "\xff", "answer": 2}\n', "line 2 is not valid UTF-8"),
        (b'{"question": "q", "answer": NaN}\n', "line 1 is not valid JSON"),
        (b'{"question": "\\ud800", "answer": 1}\n', "line 1 holds a string that is not valid Unicode"),
    ],
)
def test_load_jsonl_task_bad_bytes_are_one_line(tmp_path, content, pattern):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(content)
    with pytest.raises(AttnRhythmError, match=pattern) as info:
        load_jsonl_task(path)
    assert "\n" not in str(info.value)


def test_load_jsonl_task_missing_file(tmp_path):
    with pytest.raises(AttnRhythmError, match="does not exist"):
        load_jsonl_task(tmp_path / "nope.jsonl")


def test_load_hf_task_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(AttnRhythmError, match="pip install datasets"):
        load_hf_task("openai/gsm8k", config="main")


def _fake_datasets(monkeypatch, behaviour):
    module = types.ModuleType("datasets")
    module.config = types.SimpleNamespace(HF_DATASETS_OFFLINE=False, HF_HUB_OFFLINE=False)
    calls = []

    def load_dataset(name, config=None, *, split, download_mode):
        calls.append(
            {
                "name": name,
                "config": config,
                "split": split,
                "download_mode": download_mode,
                "env": os.environ.get("HF_DATASETS_OFFLINE"),
                "cfg_offline": module.config.HF_HUB_OFFLINE,
            }
        )
        return behaviour(name)

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return module, calls


def test_load_hf_task_from_cache(monkeypatch):
    rows = [{"question": "Q1", "answer": "work\n#### 1,000"}, {"question": "Q2", "answer": "#### 7"}]
    module, calls = _fake_datasets(monkeypatch, lambda name: rows)
    examples = load_hf_task("openai/gsm8k", "test", config="main", answer_transform=gsm8k_answer)
    assert examples == [
        {"id": "openai_gsm8k-test-0", "question": "Q1", "answer": "1000"},
        {"id": "openai_gsm8k-test-1", "question": "Q2", "answer": "7"},
    ]
    assert calls[0]["download_mode"] == "reuse_dataset_if_exists" and calls[0]["config"] == "main"
    assert calls[0]["env"] == "1" and calls[0]["cfg_offline"] is True
    assert "HF_DATASETS_OFFLINE" not in os.environ and module.config.HF_HUB_OFFLINE is False  # restored
    with pytest.raises(AttnRhythmError, match="row 0 has no field 'problem'"):
        load_hf_task("openai/gsm8k", question_field="problem")


def test_load_hf_task_not_cached(monkeypatch):
    def missing(name):
        raise FileNotFoundError(f"Couldn't find '{name}' on the Hugging Face Hub either\nmore details")

    _fake_datasets(monkeypatch, missing)
    with pytest.raises(AttnRhythmError, match="not in the local Hugging Face cache.*download it") as info:
        load_hf_task("someone/unknown")
    assert "\n" not in str(info.value)

    def broken(name):
        raise ValueError("Unknown split \"dev\". Should be one of ['train'].")

    _fake_datasets(monkeypatch, broken)
    with pytest.raises(AttnRhythmError, match="check the name, config and split"):
        load_hf_task("someone/known", split="dev")


# ============================================================================================
# Registry


def test_registry_and_errors():
    assert set(TASKS) == {"arithmetic", "countdown", "wordproblems", "math"}
    with pytest.raises(AttnRhythmError, match="unknown task 'gsm'.*arithmetic, countdown, math, word"):
        get_task("gsm")
    with pytest.raises(AttnRhythmError, match="no option colour"):
        get_task("countdown", colour="red")
    with pytest.raises(AttnRhythmError, match="needs source="):
        get_task("math")


def test_arithmetic_task():
    task = get_task("arithmetic", n_terms=(2, 4), max_operand=12, ops="+-*")
    assert isinstance(task, Task) and task.name == "arithmetic"
    batch = task.examples(50, seed=2)
    assert batch == task.examples(50, seed=2) and len({ex["prompt"] for ex in batch}) == 50
    for ex in batch:
        # Python's precedence is the task's: * before + and -, left to right
        assert int(ex["answer"]) == eval(ex["expression"])  # noqa: S307 - digits and + - * only
        assert task.reward(f"so \\boxed{{{ex['answer']}}}", ex) == 1.0
        assert task.reward(f"the answer is {ex['answer']}", ex) == 0.0  # boxed only by default
        assert task.reward(f"\\boxed{{{int(ex['answer']) + 1}}}", ex) == 0.0
    loose = get_task("arithmetic", max_operand=9, ops="+", boxed_only=False)
    ex = loose.examples(1, seed=0)[0]
    assert loose.reward(f"{ex['expression']} = {ex['answer']}", ex) == 1.0
    assert loose.reward(f"{ex['expression']} = {int(ex['answer']) + 1}", ex) == 0.0
    assert len(loose.examples(81, seed=3)) == 81  # every single-digit sum
    with pytest.raises(AttnRhythmError, match="distinct"):
        loose.examples(82)
    with pytest.raises(AttnRhythmError, match="ops"):
        get_task("arithmetic", ops="/")
    with pytest.raises(AttnRhythmError, match="n_terms"):
        get_task("arithmetic", n_terms=(1, 2))


def test_countdown_task():
    task = get_task("countdown")
    assert isinstance(task, Task) and task.name == "countdown"
    batch = task.examples(5, seed=1)
    assert batch == task.examples(5, seed=1)
    for ex in batch:
        assert {"id", "prompt", "numbers", "target"} <= set(ex)
        assert task.reward(f"<answer>{ex['solution']}</answer>", ex) == 1.0
        assert task.reward("no answer", ex) == 0.0
    subset = get_task("countdown", use_all=False, format_score=0.0)
    assert "at most once" in subset.examples(1)[0]["prompt"]
    with pytest.raises(AttnRhythmError, match="no 'numbers'"):
        task.reward("<answer>1</answer>", {"target": 1})


def test_wordproblems_task():
    task = get_task("wordproblems", steps=(3, 3))
    batch = task.examples(6, seed=2)
    for ex in batch:
        assert ex["steps"] == 3 and ex["prompt"].startswith(ex["question"]) and "\\boxed" in ex["prompt"]
        assert task.reward(ex["solution"], ex) == 1.0
        assert task.reward(f"The answer is {ex['answer']}.", ex) == 0.0  # boxed_only by default
    loose = get_task("wordproblems", boxed_only=False)
    ex = loose.examples(1)[0]
    assert loose.reward(f"The answer is {ex['answer']}.", ex) == 1.0


def test_math_task_jsonl_and_hf(tmp_path, monkeypatch):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": i + 1}) + "\n" for i in range(10)))
    task = get_task("math", source=str(path))
    batch = task.examples(4, seed=0)
    assert batch == task.examples(4, seed=0) and len({ex["id"] for ex in batch}) == 4
    for ex in batch:
        assert ex["prompt"] == math_prompt(ex["question"])
        assert task.reward(f"\\boxed{{{ex['answer']}}}", ex) == 1.0
        assert task.reward("\\boxed{-1}", ex) == 0.0
    with pytest.raises(AttnRhythmError, match="has 10"):
        task.examples(11)

    _fake_datasets(monkeypatch, lambda name: [{"question": "Q", "answer": "steps\n#### 3,000"}])
    gsm = MathTask("openai/gsm8k", config="main")
    (ex,) = gsm.examples(1)
    assert ex["answer"] == "3000" and gsm.reward("\\boxed{3,000}", ex) == 1.0
