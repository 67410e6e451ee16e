"""Rhythm credit inside verl (>= 0.9.1, < 0.10), through verl's own extension points.

* :mod:`.layout`: verl's padded and no-padding (nested) rollout layouts <-> the completion grid;
* :mod:`.credit`: gamma for a rollout batch from the actor's live (FSDP2) module;
* :mod:`.engine`: the actor setups the credit supports (checked at trainer init) and the causal LM
  it analyses inside verl's engine module (PEFT unwrapped);
* :mod:`.worker`: ``RhythmActorRolloutRefWorker``, verl's actor worker plus ``compute_rhythm_credit``;
* :mod:`.trainer`: the trainer mode ``rhythm_grpo`` (``trainer.v1.trainer_mode=rhythm_grpo``);
* :mod:`.plugin`: what verl imports (entry point ``verl.plugins``) to register the mode.

``layout`` and ``credit`` need only torch; the worker, trainer and plugin need verl and its
TransferQueue (``pip install 'attnrhythm[verl]'``). See docs/verl.md ("GRPO with
rhythm credit in verl").
"""

from __future__ import annotations

from typing import Any

from attnrhythm.integrations.verl.credit import batch_credit
from attnrhythm.integrations.verl.layout import (
    PaddedRollout,
    nested_to_padded,
    padded_rollout,
    padded_to_nested,
    response_layout,
)
from attnrhythm.rollout.credit import COUNT_KEYS, rhythm_metrics

__all__ = [
    "COUNT_KEYS",
    "PaddedRollout",
    "RhythmActorRolloutRefWorker",
    "RhythmPPOTrainer",
    "batch_credit",
    "nested_to_padded",
    "padded_rollout",
    "padded_to_nested",
    "response_layout",
    "rhythm_metrics",
    "shape_verl_advantages",
]

_LAZY = {
    "RhythmActorRolloutRefWorker": ".worker",
    "RhythmPPOTrainer": ".trainer",
    "shape_verl_advantages": ".trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
