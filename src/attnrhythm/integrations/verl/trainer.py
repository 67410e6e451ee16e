"""The verl trainer mode ``rhythm_grpo``: GRPO whose token advantages carry rhythm credit.

Select it with ``trainer.v1.trainer_mode=rhythm_grpo`` and set the credit in the mode's own
section, ``+trainer.v1.rhythm_grpo.strategy=coupled`` and any other field of
:class:`~attnrhythm.rollout.config.RhythmCreditConfig` (``q``, ``amp``, ``alpha``, ``k``, ``layers``,
``fai_horizon``, ``batch_size``, ...). The class is verl's synchronous ``PPOTrainerSync`` with
three overrides, all through verl's own hooks:

* ``_init_resource_pool_mgr``: the actor role runs :class:`RhythmActorRolloutRefWorker`;
* ``_compute_old_log_prob``: after verl's old log-probs, the actor workers compute gamma for the
  batch with the same weights (the current policy) and store it beside the batch;
* ``_compute_advantage``: after verl's advantage estimator (GRPO), the token advantages become
  ``gamma * A`` where ``A >= 0`` and stay ``A`` where ``A < 0`` (docs/method.md section 5), and the
  ``rhythm/*`` metrics join the step's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from attnrhythm.errors import AttnRhythmError
from attnrhythm.integrations.verl.worker import (
    COUNTS_FIELD,
    GAMMA_FIELD,
    SETTINGS_KEY,
    STEP_KEY,
    RhythmActorRolloutRefWorker,
)
from attnrhythm.method.credit import shape_advantages
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.rollout.credit import COUNT_KEYS, rhythm_metrics
from attnrhythm.settings import flat_names

MODE = "rhythm_grpo"
# keys of the mode's section that verl itself reads (PPOTrainer: trainer.v1.<mode>.parameter_sync_step)
_VERL_KEYS = frozenset({"parameter_sync_step"})
_ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)


def rhythm_settings(config: DictConfig | Mapping[str, Any]) -> RhythmCreditConfig:
    """The credit settings in ``trainer.v1.rhythm_grpo`` of a verl config (defaults where absent)."""
    section = (
        OmegaConf.select(config, f"trainer.v1.{MODE}", default=None)
        if isinstance(config, DictConfig)
        else None
    )
    raw = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    values = {key: value for key, value in (raw or {}).items() if key not in _VERL_KEYS}
    known = set(flat_names(RhythmCreditConfig))
    unknown = sorted(set(values) - known)
    if unknown:
        raise AttnRhythmError(
            f"unknown rhythm credit setting(s) trainer.v1.{MODE}.{', '.join(unknown)}: "
            f"use the fields of RhythmCreditConfig ({', '.join(sorted(known))})"
        )
    return RhythmCreditConfig(**values)


def shape_verl_advantages(
    advantages: torch.Tensor, gamma: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """:func:`attnrhythm.method.credit.shape_advantages` on verl tensors, in their layout.

    All three are (B, T) dense tensors or all three jagged nested tensors with the same row
    lengths (verl's no-padding layout); the result has the layout of ``advantages``.
    """
    nested = [t.is_nested for t in (advantages, gamma, response_mask)]
    if any(nested) and not all(nested):
        raise AttnRhythmError("advantages, gamma and response_mask must all be nested or all dense")
    if not nested[0]:
        return shape_advantages(advantages, gamma, response_mask)
    offsets = advantages.offsets()
    for other in (gamma, response_mask):
        if not torch.equal(other.offsets().to(offsets.device), offsets):
            raise AttnRhythmError("gamma and the advantages have different response lengths")
    # one row holding every token: the rule is elementwise, so the flat values shape exactly like rows
    flat = shape_advantages(advantages.values()[None], gamma.values()[None], response_mask.values()[None])
    return torch.nested.nested_tensor_from_jagged(flat[0].contiguous(), offsets=offsets)


@register_trainer(MODE)
class RhythmPPOTrainer(PPOTrainerSync):
    """verl's synchronous PPO trainer with attention-rhythm credit on the token advantages."""

    def __init__(self, config: DictConfig) -> None:
        self.rhythm = rhythm_settings(config)  # a bad setting fails before any worker starts
        super().__init__(config)
        self._rhythm_seconds = 0.0

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in _ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(RhythmActorRolloutRefWorker)

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_old_log_prob(batch, metrics)
        self._rhythm_seconds = 0.0
        if self.rhythm.strategy == "none":
            return batch
        batch.extra_info[SETTINGS_KEY] = self.rhythm.flat()
        batch.extra_info[STEP_KEY] = int(getattr(self, "global_steps", 0))
        started = time.perf_counter()
        try:
            self.actor_rollout_wg.compute_rhythm_credit(batch)
        finally:
            batch.extra_info.pop(SETTINGS_KEY, None)
            batch.extra_info.pop(STEP_KEY, None)
        self._rhythm_seconds = time.perf_counter() - started
        return batch

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_advantage(batch, metrics)
        if self.rhythm.strategy == "none":
            metrics.update(rhythm_metrics({}, 0.0))  # plain GRPO: gamma = 1, nothing amplified
            return batch
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["advantages", "response_mask", GAMMA_FIELD, COUNTS_FIELD],
        )
        shaped = shape_verl_advantages(data["advantages"], data[GAMMA_FIELD], data["response_mask"])
        batch = tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"advantages": shaped}, batch_size=len(batch)),
        )
        totals = dict(zip(COUNT_KEYS, data[COUNTS_FIELD].sum(0).tolist()))
        metrics.update(rhythm_metrics(totals, self._rhythm_seconds))
        return batch
