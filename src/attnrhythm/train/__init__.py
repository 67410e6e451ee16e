"""GRPO training with attention-rhythm credit (docs/method.md section 5) on top of TRL.

Needs the ``train`` extra (``pip install 'attnrhythm[train]'``: TRL 1.16, accelerate, datasets)::

    from trl import GRPOConfig
    from attnrhythm.train import RhythmCreditConfig, RhythmGRPOTrainer, task_reward_func
    from attnrhythm.tasks import get_task

    task = get_task("countdown")
    trainer = RhythmGRPOTrainer(
        model,
        reward_funcs=task_reward_func(task),
        args=GRPOConfig(output_dir="out", learning_rate=1e-6, beta=0.0),
        train_dataset=datasets.Dataset.from_list(task.examples(1000)),
        processing_class=tokenizer,
        rhythm=RhythmCreditConfig(strategy="coupled"),
    )
    trainer.train()

``RhythmCreditConfig``, ``rollout_gamma`` and ``task_reward_func`` import without TRL; the
trainer class is loaded on first access.
"""

from __future__ import annotations

from attnrhythm.lazy import lazy_exports
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.train.rewards import completion_text, task_reward_func

__all__ = [
    "ROLE_NAMES",
    "RhythmCreditConfig",
    "RhythmGRPOTrainer",
    "RolloutCredit",
    "completion_text",
    "rollout_gamma",
    "task_reward_func",
]


# loaded on first access: torch (rollout credit) and TRL (the trainer) only when used
_LAZY = {
    "ROLE_NAMES": "attnrhythm.rollout.credit",
    "RolloutCredit": "attnrhythm.rollout.credit",
    "rollout_gamma": "attnrhythm.rollout.credit",
    "RhythmGRPOTrainer": "attnrhythm.train.credit_trainer",
}


__getattr__ = lazy_exports(__name__, _LAZY)
