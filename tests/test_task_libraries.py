"""Task libraries: reasoning-gym datasets as ``rg:`` tasks, and math-verify inside the math checker."""

from __future__ import annotations

import threading

import pytest
import reasoning_gym
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks import GymTask, MathTask, Task, get_task
from attnrhythm.tasks import mathcheck as mc
from attnrhythm.tasks.gym import BLOCK, TAGS_INSTRUCTION, evaluates_answers, inert, parse_spec
from attnrhythm.tasks.mathcheck import answers_match, math_reward, symbolic_match
from attnrhythm.train.evaluate import EVAL_SEED

SMALL_SUMS = "rg:chain_sum:min_terms=2,max_terms=2,min_digits=1,max_digits=1"

# ============================================================================================
# rg: spec parsing and errors


def test_parse_spec_reads_yaml_values_and_bracketed_commas():
    name, options = parse_spec("rg:countdown:min_numbers=3, shuffle=false,operators=['+', '-'],x=0.5")
    assert name == "countdown"
    assert options == {"min_numbers": 3, "shuffle": False, "operators": ["+", "-"], "x": 0.5}
    assert parse_spec("rg:gsm_symbolic") == ("gsm_symbolic", {})
    assert parse_spec("rg:gsm_symbolic:") == ("gsm_symbolic", {})


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("rg:gsm_symbolc", "did you mean gsm_symbolic"),
        ("rg:", "name a dataset"),
        ("rg:countdown:min_numbers", "write KEY=VALUE"),
        ("rg:countdown:min_numbers=3,min_numbers=4", "given twice"),
        ("rg:countdown:colour=red", "no option colour: valid options are answer_format, max_numbers"),
        ("rg:countdown:size=5", "set by attnrhythm"),
        ("rg:countdown:seed=5", "set by attnrhythm"),
        ("rg:countdown:min_numbers=x", "must be an integer"),
        ("rg:countdown:operators=+", "must be a list"),
        ("rg:countdown:operators=[+,*]", "not valid YAML"),
        ("rg:countdown:min_numbers=9,max_numbers=2", "rejects the options min_numbers=9,max_numbers=2"),
        ("rg:gsm_symbolic:answer_format=xml", "use tags or boxed"),
    ],
)
def test_bad_specs_are_one_line(spec, needle):
    with pytest.raises(AttnRhythmError) as err:
        get_task(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_options_inline_and_as_keywords():
    task = get_task("rg:countdown:min_numbers=3", max_numbers=3, answer_format="boxed")
    assert isinstance(task, GymTask) and task.answer_format == "boxed"
    assert all(len(task.entry(ex)["metadata"]["numbers"]) == 3 for ex in task.examples(4))
    with pytest.raises(AttnRhythmError, match="given in 'rg:countdown:min_numbers=3' and again"):
        get_task("rg:countdown:min_numbers=3", min_numbers=4)
    with pytest.raises(AttnRhythmError, match="or rg:NAME"):
        get_task("gsm_symbolic")


# ============================================================================================
# rg: examples and scoring


def test_gsm_symbolic_examples_and_score_answer():
    task = get_task("rg:gsm_symbolic")
    assert isinstance(task, Task) and task.name == "rg:gsm_symbolic"
    batch = task.examples(8, seed=0)
    assert batch == get_task("rg:gsm_symbolic").examples(8, seed=0)  # deterministic, fresh object
    assert len({ex["prompt"] for ex in batch}) == 8
    reference = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=8)
    for ex in batch:
        assert ex["prompt"] == f"{ex['question']}\n\n{TAGS_INSTRUCTION}"
        entry = task.entry(ex)
        assert entry["answer"] == ex["answer"] and entry["question"] == ex["question"]
        # the dataset's own scorer decides, on the last <answer> block
        right, wrong = f"<answer>{ex['answer']}</answer>", f"<answer>{int(ex['answer']) + 1}</answer>"
        assert task.reward(f"steps ... {right}", ex) == 1.0
        assert task.reward(wrong, ex) == reference.score_answer(str(int(ex["answer"]) + 1), entry) < 1.0
        assert task.reward(f"{right} no, {wrong}", ex) < 1.0
        assert task.reward(f"The answer is {ex['answer']}.", ex) == 0.0  # no tags: no answer
    # seed 0 is reasoning-gym seed 0: the same items as the library's own dataset
    assert [ex["question"] for ex in batch] == [e["question"] for e in reference]


def test_boxed_answer_format():
    task = get_task("rg:gsm_symbolic:answer_format=boxed")
    ex = task.examples(1, seed=3)[0]
    assert ex["prompt"].endswith("\\boxed{answer}.")
    assert task.reward(f"so \\boxed{{{ex['answer']}}}", ex) == 1.0
    assert task.reward(f"<answer>{ex['answer']}</answer>", ex) == 0.0


def test_rg_countdown_scores_with_its_own_rules():
    task = get_task("rg:countdown:min_numbers=3,max_numbers=3,max_target=200")
    for ex in task.examples(3, seed=1):
        meta = task.entry(ex)["metadata"]
        assert task.reward(f"<answer>{meta['expression']}</answer>", ex) == 1.0
        assert task.reward(f"<answer>{meta['numbers'][0]}</answer>", ex) < 1.0  # numbers unused
        assert task.reward("<answer>__import__('os')</answer>", ex) < 1.0


def test_training_and_heldout_seeds_never_share_items():
    task = get_task(SMALL_SUMS)
    train, held = task.examples(40, seed=0), task.examples(40, seed=EVAL_SEED)
    assert {ex["rg_seed"] for ex in train} == {0}
    assert {ex["rg_seed"] for ex in held} == {(EVAL_SEED % 4096) * BLOCK}
    # nearby seeds are whole blocks apart, not the shifted copy reasoning-gym's seed + index gives
    assert task.examples(5, seed=1)[0]["rg_seed"] == BLOCK
    assert [ex["question"] for ex in task.examples(5, seed=1)] != [ex["question"] for ex in train[1:6]]


def test_distinct_questions_and_too_few():
    task = get_task(SMALL_SUMS)  # 2 one-digit terms with + or -: 200 distinct questions
    batch = task.examples(150, seed=2)
    assert len({ex["question"] for ex in batch}) == 150
    for ex in batch[:20]:
        assert task.reward(f"<answer>{ex['answer']}</answer>", ex) == 1.0
    with pytest.raises(AttnRhythmError, match="only 200 distinct questions for 300"):
        task.examples(300, seed=2)
    assert task.examples(0) == []


def test_reward_checks_the_example_and_survives_a_raising_scorer(monkeypatch):
    task = get_task(SMALL_SUMS)
    ex = task.examples(1, seed=0)[0]
    other = get_task("rg:chain_sum:min_terms=3,max_terms=3")
    with pytest.raises(AttnRhythmError, match="was not made by rg:chain_sum"):
        other.reward("<answer>1</answer>", ex)
    # an example without the rg fields (e.g. from a file) is scored on its answer alone
    bare = {"question": ex["question"], "answer": ex["answer"]}
    assert task.reward(f"<answer>{ex['answer']}</answer>", bare) == 1.0
    with pytest.raises(AttnRhythmError, match="no 'answer' field"):
        task.reward("<answer>1</answer>", {"question": "?"})
    dataset = task._build(ex["rg_seed"], ex["rg_size"])

    def boom(answer, entry):
        raise ValueError("malformed")

    monkeypatch.setattr(dataset, "score_answer", boom)
    assert task.reward("<answer>x</answer>", ex) == 0.0


# ============================================================================================
# math-verify in the math checker


@pytest.mark.parametrize(
    ("predicted", "reference", "ok"),
    [
        (r"\frac{1}{2}", "0.5", True),  # numbers: our exact rule
        ("0.333333", r"\frac{1}{3}", False),  # exact, although math-verify rounds it equal
        ("17 + 8", 25, False),  # a numeric reference needs a number, not the question copied
        (r"3 \times 4", "12", False),
        (r"\sqrt{4}", 2, False),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),  # from here on: math-verify
        (r"\sqrt{4}", r"\sqrt{2}^2", True),
        ("x+1", "1+x", True),
        (r"\pi/2", r"\frac{\pi}{2}", True),
        (r"\{1,2\}", r"\{2,1\}", True),
        ("[1,2)", "[1,2)", True),
        (r"2\sqrt{3}", r"\sqrt{12}", True),
        (r"\sqrt{3}", r"\sqrt{2}", False),
        ("x+2", "x+1", False),
        ("12,3", 123, False),
        ("Monday", "Tuesday", False),
    ],
)
def test_answers_match_with_math_verify(predicted, reference, ok):
    assert answers_match(predicted, reference) is ok


def test_math_verify_rounds_and_evaluates_so_numbers_stay_ours():
    assert symbolic_match("0.333333", "1/3") is True
    assert answers_match("0.333333", "1/3") is False
    assert symbolic_match("17 + 8", "25") is True
    assert answers_match("17 + 8", "25") is False


def test_boxing_the_question_earns_nothing():
    task = get_task("arithmetic", n_terms=(2, 3), ops="+-*")
    for ex in task.examples(10, seed=4):
        assert task.reward(f"\\boxed{{{ex['expression']}}}", ex) == 0.0
        assert task.reward(f"\\boxed{{{ex['answer']}}}", ex) == 1.0


def test_boxed_extraction_then_math_verify():
    assert math_reward(r"... so \boxed{\dfrac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}", boxed_only=True) == 1.0
    assert math_reward(r"\boxed{\frac{\pi}{2}} hmm, no: \boxed{\pi}", r"\pi/2", boxed_only=True) == 0.0
    assert math_reward(r"it is \frac{\pi}{2}", r"\pi/2", boxed_only=True) == 0.0  # no box


def test_math_task_uses_math_verify(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Half of pi?", "answer": "\\\\frac{\\\\pi}{2}"}\n', encoding="utf-8")
    task = MathTask(str(path))
    ex = task.examples(1)[0]
    assert task.reward(r"so \boxed{\pi/2}", ex) == 1.0
    assert task.reward(r"so \boxed{\pi}", ex) == 0.0


def test_math_verify_in_a_worker_thread():
    out: list[bool | None] = []
    worker = threading.Thread(target=lambda: out.append(symbolic_match(r"\sqrt{4}", "2")))
    worker.start()
    worker.join()
    assert out == [True]


def test_without_math_verify_our_rules_remain(monkeypatch):
    monkeypatch.setattr(mc, "_MATH_VERIFY", False)
    assert symbolic_match(r"\sqrt{4}", "2") is None
    assert answers_match(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}") is False
    assert answers_match(r"\frac{1}{2}", 0.5) and answers_match(r"\text{Monday}", "monday")


def test_long_answers_are_not_handed_to_math_verify():
    long = "+".join(["x"] * 200)
    assert symbolic_match(long, long[::-1]) is False
    assert answers_match(long, long)  # equal text still matches


# ============================================================================================
# the guard for scorers that evaluate answers as Python


def test_scorers_that_evaluate_answers_are_found():
    flagged = {name for name, (cls, _) in reasoning_gym.factory.DATASETS.items() if evaluates_answers(cls)}
    assert {"countdown", "puzzle24", "simple_integration", "spiral_matrix", "n_queens"} <= flagged
    assert "gsm_symbolic" not in flagged and "chain_sum" not in flagged
    assert get_task("rg:countdown").guarded and not get_task("rg:gsm_symbolic").guarded


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("6*(98 - 54) - 34 - 66", True),
        ("x**3/3 + sin(x) + C", True),
        ("x^2 + 2*x", True),
        ("3*x**(1/2)", True),
        ("[[0, 1], [1, 0]]", True),
        ("['a', 'b']", True),
        ("1 2 3\n4 5 6", True),  # not Python: nothing can run
        ("open('f', 'w')", False),
        ("().__class__", False),
        ("os.system(1)", False),
        ("getattr(x, y)", False),
        ("9**9**9", False),
        ("(9**99)**99", False),
        ("'a'*10**9", False),
        ("[0]*10**9", False),
        ("1<<10**9", False),
        ("99999999!", False),
    ],
)
def test_inert(answer, ok):
    assert inert(answer) is ok


def test_guard_keeps_the_answer_from_running(tmp_path):
    task = get_task("rg:countdown:min_numbers=3,max_numbers=3")
    ex = task.examples(1, seed=0)[0]
    marker = tmp_path / "ran"
    attack = f"<answer>__import__('pathlib').Path({str(marker)!r}).write_text('x')</answer>"
    assert task.reward(attack, ex) == task.reward("no answer at all", ex) < 1.0
    assert not marker.exists()
    # the library's own scorer does run it: the reason for the guard
    dataset = task._build(ex["rg_seed"], ex["rg_size"])
    dataset.score_answer(attack[8:-9], task.entry(ex))
    assert marker.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=40))
def test_any_option_text_builds_or_fails_in_one_line(text):
    try:
        task = get_task(f"rg:countdown:{text}")
    except AttnRhythmError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(task, GymTask)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_inert_never_raises(text):
    assert inert(text) in (True, False)


def test_missing_reasoning_gym_is_one_line(monkeypatch):
    import attnrhythm.tasks.gym as gym

    real = gym.importlib.import_module

    def fake(name, *args):
        if name == "reasoning_gym":
            raise ImportError("No module named 'reasoning_gym'")
        return real(name, *args)

    monkeypatch.setattr(gym.importlib, "import_module", fake)
    with pytest.raises(AttnRhythmError, match=r"pip install 'attnrhythm\[tasks\]'"):
        get_task("rg:gsm_symbolic")
