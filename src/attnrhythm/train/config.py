"""TRL-only parts of the rhythm credit settings (no TRL needed to import them).

The settings themselves, :class:`~attnrhythm.rollout.config.RhythmCreditConfig`, are
engine-neutral (verl reads them too) and live in :mod:`attnrhythm.rollout.config`.
"""

from __future__ import annotations

from attnrhythm.rollout.config import CREDIT_FORWARDS, RhythmCreditConfig

__all__ = ["CREDIT_FORWARDS", "RhythmCreditConfig", "trl_runs_old_logps_forward"]


def trl_runs_old_logps_forward(
    gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int, vllm_is: bool = False
) -> bool:
    """TRL 1.16's condition for its no-grad ``old_per_token_logps`` forward over each rollout batch.

    Gradient accumulation not a multiple of the generation period (``steps_per_generation x
    num_iterations``; with TRL's default ``steps_per_generation`` that is ``num_iterations > 1``),
    or vLLM importance-sampling correction (``vllm_is``).
    """
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0 or vllm_is

