"""Adapt a verifiable task (:mod:`attnrhythm.tasks`) to TRL's reward-function signature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnrhythm.tasks import Task

# keyword arguments TRL adds for every reward function; they are not dataset columns
_TRL_EXTRAS = frozenset({"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"})


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal content blocks
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(completion)


def task_reward_func(task: Task) -> Callable[..., list[float]]:
    """A TRL reward function calling ``task.reward(completion, example)`` for each completion.

    The example handed to the task is rebuilt from the dataset columns TRL forwards as keyword
    lists (so a dataset made from ``task.examples(n)`` works as is), plus ``prompt``.
    """

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_EXTRAS and isinstance(v, list)}
        out = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            example = {k: v[i] for k, v in columns.items() if len(v) == len(completions)}
            example["prompt"] = prompt
            out.append(float(task.reward(completion_text(completion), example)))
        return out

    reward.__name__ = f"{task.name}_reward"
    return reward
