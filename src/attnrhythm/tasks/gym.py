"""Any `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ dataset as a task.

A task spec ``rg:NAME`` or ``rg:NAME:KEY=VALUE,KEY=VALUE`` names a registered reasoning-gym
dataset (``rg:gsm_symbolic``, ``rg:countdown:min_numbers=3,max_numbers=4``).  The options are
the fields of the dataset's config class; values are read as YAML (``4``, ``0.5``, ``true``,
``[+, -]``; a comma inside brackets does not split options), and a list becomes a tuple where
the field's default is one.  One option is ours, not the dataset's: ``answer_format`` (below).
``seed`` and ``size`` are not options: attnrhythm sets them from the seed and ``n`` it is given.

Examples (:meth:`GymTask.examples`): the seed picks a disjoint block of reasoning-gym seeds.
reasoning-gym builds item ``i`` of a dataset with seed ``s`` from ``Random(s + i)``, so the
datasets of two nearby seeds share items; here seed ``k`` uses reasoning-gym seed
``(k mod 4096) * 2**20`` and items ``0 .. n-1`` of it, so two seeds that differ modulo 4096
(training's ``data_seed`` 0 and evaluation's ``eval_seed`` 10 000, for example) never reuse an
item as long as ``n <= 2**20``.  Repeated question texts are skipped (the dataset is rebuilt at
sizes ``n, 2n, 4n, ...`` until ``n`` distinct questions are found), so the ``n`` examples are
distinct; evaluation also drops any held-out prompt equal to a training prompt.

Scoring (:meth:`GymTask.reward`): the dataset's own ``score_answer(answer, entry)``, on the entry
rebuilt from the example's ``rg_seed``/``rg_size``/``rg_index`` (so no metadata has to travel
through a training dataset).  The answer string passed to it is taken from the response by
``answer_format``:

* ``tags`` (default, the reasoning-gym convention): the prompt asks for the final answer inside
  ``<answer> </answer>``; the answer is the stripped content of the *last* such block
  (``reasoning_gym.utils.extract_answer``), or ``None`` without one (which scores as the
  dataset decides, usually 0).
* ``boxed``: the prompt asks for ``\\boxed{}``; the answer is the content of the last
  well-formed box (:func:`attnrhythm.tasks.mathcheck.extract_answer` with ``boxed_only``).

Rewards are the scorer's values in [0, 1] (some give partial credit, e.g. 0.01 for a wrong
number on ``gsm_symbolic``); a completion is *correct* when its reward is 1.0.  A scorer that
raises on a malformed answer scores 0.0 instead of ending a training run.

Guard against scorers that run the answer as Python.  Some reasoning-gym scorers pass the
model's answer to ``eval`` or to sympy's ``parse_expr`` (which calls ``eval``): in 0.1.25
``countdown``, ``puzzle24``, ``simple_integration``, ``intermediate_integration``,
``polynomial_multiplication``, ``binary_matrix``, ``spiral_matrix``, ``string_insertion`` and
``n_queens`` -- an answer such as ``__import__('os').system(...)`` would run inside the trainer.
For a dataset whose ``score_answer`` source calls one of those (:func:`evaluates_answers`; a
scorer whose source cannot be read counts as one), an answer reaches the scorer only when
:func:`inert` accepts it, else the scorer gets ``None`` (no answer).  ``inert`` accepts
literals, names without a leading underscore, arithmetic and comparisons, lists/tuples/sets,
and calls of the math functions in :data:`MATH_CALLS`; it refuses attribute access, other calls,
``!`` (sympy's factorial), shifts, string or list repetition and towers of powers.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.tasks.mathcheck import extract_answer as extract_boxed
from attnrhythm.tasks.mathcheck import math_prompt

PREFIX = "rg:"
#: reasoning-gym seeds per attnrhythm seed block, and the number of blocks.
BLOCK = 2**20
BLOCKS = 4096
TAGS_INSTRUCTION = (
    "Think it through step by step, then write only the final answer inside <answer> </answer> tags."
)
ANSWER_FORMATS = ("tags", "boxed")
_OURS = ("answer_format",)
_SET_BY_US = ("seed", "size")


#: Functions an answer may call when its scorer evaluates it (see :func:`inert`).
MATH_CALLS = frozenset(
    "sin cos tan cot sec csc asin acos atan acot sinh cosh tanh asinh acosh atanh "
    "exp log ln sqrt root Abs abs Rational Integer Float".split()
)
_EVALUATORS = re.compile(r"(?<![\w.])(?:eval|exec|parse_expr|sympify|S)\s*\(|\.(?:parse_expr|sympify)\s*\(")
_MAX_EXPONENT = 100
_MAX_INERT_CHARS = 2000


def evaluates_answers(dataset_cls: type) -> bool:
    """Whether ``dataset_cls.score_answer``'s source calls eval, exec, parse_expr or sympify."""
    try:
        source = inspect.getsource(dataset_cls.score_answer)
    except (OSError, TypeError):
        return True
    return bool(_EVALUATORS.search(source.replace("literal_eval(", "")))


def _small(node: ast.AST) -> bool:
    """An exponent that cannot blow up: a number up to 100, a name, their negation or quotient."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and abs(node.value) <= _MAX_EXPONENT
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _small(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _small(node.left) and _small(node.right)
    return False


def _has(node: ast.AST, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(n, kinds) for n in ast.walk(node))


def _inert_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return not node.id.startswith("_")
    if isinstance(node, ast.UnaryOp):
        return _inert_node(node.operand)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.LShift, ast.RShift, ast.MatMult)):
            return False
        if isinstance(node.op, ast.Pow):
            if not _small(node.right) or any(
                isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node.left)
            ):
                return False
        if isinstance(node.op, ast.Mult):
            sequence = (ast.List, ast.Tuple, ast.Set, ast.JoinedStr)
            texts = [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if texts or _has(node, sequence):
                return False
        return _inert_node(node.left) and _inert_node(node.right)
    if isinstance(node, ast.BoolOp):
        return all(_inert_node(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return _inert_node(node.left) and all(_inert_node(c) for c in node.comparators)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_inert_node(e) for e in node.elts)
    if isinstance(node, ast.Call):
        return (
            isinstance(node.func, ast.Name)
            and node.func.id in MATH_CALLS
            and not node.keywords
            and all(_inert_node(a) for a in node.args)
        )
    return False


def inert(answer: str) -> bool:
    """Whether ``answer`` is safe to hand to a scorer that evaluates it (module docstring)."""
    if len(answer) > _MAX_INERT_CHARS or "__" in answer or re.search(r"!(?!=)", answer):
        return False
    try:
        tree = ast.parse(answer.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True  # not Python: eval and parse_expr reject it before running anything
    return _inert_node(tree.body)


def _rg() -> Any:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as exc:
        raise AttnRhythmError(
            "rg: tasks need reasoning-gym: pip install 'attnrhythm[tasks]' (or pip install reasoning-gym)"
        ) from exc


def dataset_names() -> list[str]:
    """The names of all registered reasoning-gym datasets, sorted."""
    return sorted(_rg().factory.DATASETS)


def _split_options(text: str) -> list[str]:
    """Split ``a=1,b=[x, y]`` at the commas outside brackets and quotes."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"rg:NAME[:K=V,...]"`` -> ``(NAME, {K: V})`` with values read as YAML (not yet validated)."""
    if not spec.startswith(PREFIX):
        raise AttnRhythmError(f"bad task {spec!r}: a reasoning-gym task is written rg:NAME[:KEY=VALUE,...]")
    name, _, text = spec[len(PREFIX) :].partition(":")
    name = name.strip()
    if not name:
        raise AttnRhythmError(f"bad task {spec!r}: name a dataset, e.g. rg:gsm_symbolic")
    options: dict[str, Any] = {}
    for item in _split_options(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AttnRhythmError(
                f"bad option {item!r} in {spec!r}: write KEY=VALUE, e.g. rg:countdown:min_numbers=3"
            )
        if key in options:
            raise AttnRhythmError(f"option {key} is given twice in {spec!r}: give it once")
        options[key] = _yaml_value(value.strip(), item, spec)
    return name, options


def _yaml_value(value: str, item: str, spec: str) -> Any:
    yaml = importlib.import_module("yaml")  # a dependency of reasoning-gym
    try:
        return yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        raise AttnRhythmError(f"bad option {item!r} in {spec!r}: the value is not valid YAML") from None


def _config_fields(name: str) -> dict[str, dataclasses.Field]:
    registry = _rg().factory.DATASETS
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"{len(registry)} datasets exist"
        raise AttnRhythmError(
            f"unknown reasoning-gym dataset '{name}' ({hint}): "
            'list them with python -c "import reasoning_gym; print(sorted(reasoning_gym.factory.DATASETS))"'
        )
    return {f.name: f for f in dataclasses.fields(registry[name][1])}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (lists become tuples where needed)."""
    bad = f"bad option {key}={value!r} for rg:{name}"
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise AttnRhythmError(f"{bad}: it must be true or false (default {default})")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise AttnRhythmError(f"{bad}: it must be an integer (default {default})")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AttnRhythmError(f"{bad}: it must be a number (default {default})")
        return float(value)
    elif isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise AttnRhythmError(f"{bad}: it must be a list such as [a, b] (default {list(default)})")
        return tuple(value) if isinstance(default, tuple) else list(value)
    elif isinstance(default, str) and not isinstance(value, str):
        return str(value)
    return value


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclass
class GymTask:
    """A reasoning-gym dataset (``dataset``) with its config ``options`` and our ``answer_format``."""

    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    answer_format: str = "tags"
    name: str = field(default="", init=False)
    _config: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _built: dict[tuple[int, int], Any] = field(default_factory=dict, init=False, repr=False)
    #: True when the dataset's scorer evaluates answers, so they pass :func:`inert` first.
    guarded: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        fields = _config_fields(self.dataset)
        spec = f"rg:{self.dataset}"
        if self.answer_format not in ANSWER_FORMATS:
            raise AttnRhythmError(
                f"bad option answer_format={self.answer_format!r} for {spec}: use tags or boxed"
            )
        config: dict[str, Any] = {}
        for key, value in self.options.items():
            if key in _SET_BY_US:
                raise AttnRhythmError(
                    f"option {key} of {spec} is set by attnrhythm: use --seed / --data-seed / --eval-seed "
                    "for the seed and --n / --n-train for the number of examples"
                )
            if key not in fields:
                valid = sorted([k for k in fields if k not in _SET_BY_US] + list(_OURS))
                raise AttnRhythmError(f"{spec} has no option {key}: valid options are {', '.join(valid)}")
            config[key] = _coerce(self.dataset, key, value, _default(fields[key]))
        self._config = config
        self.name = spec
        self.guarded = evaluates_answers(_rg().factory.DATASETS[self.dataset][0])
        self._build(0, 1)  # validate the options now: a bad value fails here, in one line

    def _build(self, rg_seed: int, size: int) -> Any:
        key = (rg_seed, size)
        if key not in self._built:
            try:
                self._built[key] = _rg().create_dataset(self.dataset, seed=rg_seed, size=size, **self._config)
            except Exception as exc:  # config validation raises AssertionError, ValueError, TypeError...
                opts = ",".join(f"{k}={v}" for k, v in self._config.items()) or "defaults"
                raise AttnRhythmError(
                    f"rg:{self.dataset} rejects the options {opts} ({_one_line(exc)}): fix them"
                ) from exc
        return self._built[key]

    def _entry(self, rg_seed: int, size: int, index: int) -> dict[str, Any]:
        try:
            return self._build(rg_seed, size)[index]
        except AttnRhythmError:
            raise
        except Exception as exc:
            raise AttnRhythmError(
                f"rg:{self.dataset} could not generate item {index} ({_one_line(exc)}): "
                "change the options or ask for fewer examples"
            ) from exc

    def prompt(self, question: str) -> str:
        """The question followed by the instruction for ``answer_format``."""
        if self.answer_format == "boxed":
            return math_prompt(question)
        return f"{question.strip()}\n\n{TAGS_INSTRUCTION}"

    def examples(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` examples with distinct questions, deterministic for ``seed`` (module docstring)."""
        if n < 0:
            raise AttnRhythmError(f"n={n} is negative: ask for zero or more examples")
        if n > BLOCK:
            raise AttnRhythmError(f"n={n} is more than {BLOCK} examples per seed: ask for fewer")
        if n == 0:
            return []
        rg_seed = (seed % BLOCKS) * BLOCK
        size = n
        while True:
            chosen: list[tuple[int, dict[str, Any]]] = []
            seen: set[str] = set()
            for index in range(size):
                entry = self._entry(rg_seed, size, index)
                question = str(entry["question"])
                if question not in seen:
                    seen.add(question)
                    chosen.append((index, entry))
                    if len(chosen) == n:
                        break
            if len(chosen) == n or size >= min(8 * n, BLOCK):
                break
            size = min(2 * size, BLOCK)
        if len(chosen) < n:
            raise AttnRhythmError(
                f"rg:{self.dataset} gave only {len(chosen)} distinct questions for {n} examples "
                "with these options: ask for fewer or widen the options"
            )
        return [
            {
                "id": f"rg-{self.dataset}-{seed}-{i:05d}",
                "prompt": self.prompt(str(entry["question"])),
                "question": str(entry["question"]),
                "answer": "" if entry.get("answer") is None else str(entry["answer"]),
                "rg_seed": rg_seed,
                "rg_size": size,
                "rg_index": index,
            }
            for i, (index, entry) in enumerate(chosen)
        ]

    def entry(self, example: dict[str, Any]) -> dict[str, Any]:
        """The reasoning-gym entry (question, answer, metadata) behind an example."""
        if all(k in example for k in ("rg_seed", "rg_size", "rg_index")):
            entry = self._entry(int(example["rg_seed"]), int(example["rg_size"]), int(example["rg_index"]))
            if "question" in example and str(example["question"]) != str(entry["question"]):
                raise AttnRhythmError(
                    f"example {example.get('id', '?')} was not made by {self.name} with these options: "
                    "score it with the task that made it"
                )
            return entry
        if "answer" not in example:
            raise AttnRhythmError(
                f"example has no 'answer' field: pass an example made by the {self.name} task's examples()"
            )
        return {"question": example.get("question", ""), "answer": example["answer"], "metadata": {}}

    def extract(self, completion: str) -> str | None:
        """The answer string handed to ``score_answer`` (see ``answer_format``); ``None`` for an
        answer that the guard refuses (a scorer that evaluates answers, module docstring)."""
        if self.answer_format == "boxed":
            answer = extract_boxed(completion, boxed_only=True)
        else:
            answer = importlib.import_module("reasoning_gym.utils").extract_answer(completion)
        if answer is not None and self.guarded and not inert(answer):
            return None
        return answer

    def reward(self, completion: str, example: dict[str, Any]) -> float:
        """The dataset's ``score_answer`` of the extracted answer, in [0, 1]."""
        entry = self.entry(example)
        if "rg_seed" in example and "rg_size" in example:
            dataset = self._build(int(example["rg_seed"]), int(example["rg_size"]))
        else:
            dataset = self._build(0, 1)
        try:
            score = float(dataset.score_answer(self.extract(completion), entry))
        except Exception:  # a scorer tripping over a malformed answer: that answer is wrong
            return 0.0
        if score != score:
            return 0.0
        return min(max(score, 0.0), 1.0)


def make_gym_task(spec: str, **options: Any) -> GymTask:
    """A :class:`GymTask` from ``rg:NAME[:K=V,...]`` plus keyword options (a key may not be in both)."""
    name, inline = parse_spec(spec)
    both = sorted(set(inline) & set(options))
    if both:
        raise AttnRhythmError(f"option {', '.join(both)} is given in {spec!r} and again as a task option")
    merged = {**inline, **options}
    answer_format = merged.pop("answer_format", "tags")
    return GymTask(name, merged, answer_format=answer_format)
