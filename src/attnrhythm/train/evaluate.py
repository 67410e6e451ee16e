"""Held-out accuracy of a policy on a verifiable task: greedy pass@1, sampled avg@K and pass@K.

Definitions (``c_i`` = correct samples of problem ``i`` out of ``K``):

* **correct**: a completion is correct when ``task.reward(completion, example) == 1.0``. Partial
  credit (e.g. Countdown's 0.1 format score) counts as wrong; ``mean_reward`` keeps it.
* ``pass@1``: share of problems whose **greedy** completion is correct.
* ``avg@K``: mean over problems of ``c_i / K``, the ``K`` completions sampled at ``temperature``.
* ``pass@K``: share of problems with ``c_i >= 1`` (with exactly ``K`` samples the unbiased
  estimator of Chen et al. reduces to this).
* ``mean_reward``: mean task reward of the sampled completions (of the greedy ones when ``K = 0``).

Held-out problems: :func:`heldout_examples` draws ``task.examples(n, seed=eval_seed)`` with a seed
that training does not use (default :data:`EVAL_SEED` = 10 000; training draws with its
``data_seed``, 0 by default) and drops every example whose prompt also appears in the training
set when that set is given, so the evaluation never scores a training prompt.

Prompts are formatted as in training: the chat template with a generation prompt for chat models
(:func:`attnrhythm.generate.prompt_ids`), plain text otherwise. Generation is batched with left
padding; sampling is seeded per batch, so a result is reproducible for the same arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.generate import generate, prompt_ids
from attnrhythm.tasks import Task

#: Default seed of held-out examples (training uses ``data_seed``, 0 by default).
EVAL_SEED = 10_000


def heldout_examples(
    task: Task, n: int, *, eval_seed: int = EVAL_SEED, exclude_prompts: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """``n`` examples drawn with ``eval_seed`` minus those whose prompt is in ``exclude_prompts``.

    The result may hold fewer than ``n`` examples when some were dropped as training prompts.
    """
    if n < 1:
        raise AttnRhythmError(f"bad --n {n}: evaluate at least 1 problem")
    examples = task.examples(n, seed=eval_seed)
    if exclude_prompts is not None:
        seen = set(exclude_prompts)
        examples = [ex for ex in examples if ex["prompt"] not in seen]
    if not examples:
        raise AttnRhythmError("every held-out example is a training prompt: pass another --eval-seed")
    return examples


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _generate_all(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    temperature: float,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None] | None,
) -> list[str]:
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        out = generate(
            model,
            tokenizer,
            batch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed * 1_000_003 + start,
        )
        texts.extend(_decode(tokenizer, ids) for ids in out)
        if advance is not None:
            advance(len(batch))
    return texts


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task,
    n: int = 64,
    samples: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    *,
    eval_seed: int = EVAL_SEED,
    exclude_prompts: Iterable[str] | None = None,
    examples: list[dict[str, Any]] | None = None,
    chat: bool = True,
    greedy: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on held-out problems of ``task`` (see the module docstring).

    Args:
        n, eval_seed, exclude_prompts: the held-out set (:func:`heldout_examples`); ``examples``
            replaces it when given.
        samples: K, completions sampled per problem at ``temperature`` (0 skips sampling).
        greedy: also decode greedily for ``pass@1`` (on by default).
        progress: called as ``progress(done, total)`` in completions.

    Returns a dict with ``n``, ``K``, ``temperature``, ``pass@1`` (None without greedy),
    ``avg@K`` and ``pass@K`` (None when K = 0), ``mean_reward``, ``mean_completion_tokens`` and
    ``problems``: per problem ``id``, ``greedy_reward``, ``greedy_correct``, ``rewards`` (of the
    samples), ``correct`` (count), ``greedy_completion``.
    """
    if samples < 0:
        raise AttnRhythmError(f"bad --samples {samples}: it must be >= 0")
    if samples == 0 and not greedy:
        raise AttnRhythmError("nothing to evaluate: ask for --samples >= 1 or greedy decoding")
    if temperature <= 0 and samples > 0:
        raise AttnRhythmError(f"bad --temperature {temperature}: sampling needs a temperature > 0")
    if batch_size < 1:
        raise AttnRhythmError(f"bad --batch-size {batch_size}: it must be >= 1")
    if max_new_tokens < 1:
        raise AttnRhythmError(f"bad --max-new-tokens {max_new_tokens}: it must be >= 1")
    if examples is None:
        examples = heldout_examples(task, n, eval_seed=eval_seed, exclude_prompts=exclude_prompts)
    prompts = [prompt_ids(tokenizer, ex["prompt"], chat=chat) for ex in examples]
    total = len(prompts) * ((1 if greedy else 0) + samples)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            greedy_texts: list[str] = []
            if greedy:
                greedy_texts = _generate_all(
                    model,
                    tokenizer,
                    prompts,
                    temperature=0.0,
                    seed=seed,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    advance=advance,
                )
            sampled: list[str] = []
            if samples:
                # problem-major order: the K samples of a problem are neighbours
                repeated = [p for p in prompts for _ in range(samples)]
                sampled = _generate_all(
                    model,
                    tokenizer,
                    repeated,
                    temperature=temperature,
                    seed=seed + 1,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    advance=advance,
                )
    finally:
        if was_training:
            model.train()

    problems = []
    lengths: list[int] = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {"id": ex.get("id", str(i))}
        if greedy:
            reward = float(task.reward(greedy_texts[i], ex))
            row.update(greedy_reward=reward, greedy_correct=reward == 1.0, greedy_completion=greedy_texts[i])
        if samples:
            texts = sampled[i * samples : (i + 1) * samples]
            rewards = [float(task.reward(text, ex)) for text in texts]
            row.update(rewards=rewards, correct=sum(r == 1.0 for r in rewards))
            lengths.extend(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
        problems.append(row)

    count = len(problems)
    result: dict[str, Any] = {
        "task": task.name,
        "n": count,
        "K": samples,
        "temperature": temperature,
        "seed": seed,
        "eval_seed": eval_seed,
        "max_new_tokens": max_new_tokens,
        "pass@1": sum(p["greedy_correct"] for p in problems) / count if greedy else None,
        "avg@K": sum(p["correct"] / samples for p in problems) / count if samples else None,
        "pass@K": sum(p["correct"] > 0 for p in problems) / count if samples else None,
    }
    if samples:
        result["mean_reward"] = sum(sum(p["rewards"]) for p in problems) / (count * samples)
        result["mean_completion_tokens"] = sum(lengths) / max(len(lengths), 1)
    else:
        result["mean_reward"] = sum(p["greedy_reward"] for p in problems) / count
        result["mean_completion_tokens"] = None
    result["avg@K_std_err"] = _std_err([p["correct"] / samples for p in problems]) if samples else None
    result["problems"] = problems
    return result


def _std_err(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var / len(values))
