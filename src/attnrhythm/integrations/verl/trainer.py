"""The verl trainer mode ``rhythm_grpo``: GRPO whose token advantages carry rhythm credit.

Select it with ``trainer.v1.trainer_mode=rhythm_grpo`` and set the credit in the mode's own
section, ``+trainer.v1.rhythm_grpo.strategy=coupled`` and any other field of
:class:`~attnrhythm.rollout.config.RhythmCreditConfig` (``q``, ``amp``, ``alpha``, ``k``, ``layers``,
``fai_horizon``, ``batch_size``, ...). The class is verl's synchronous ``PPOTrainerSync`` with
three overrides, all through verl's own hooks:

* ``_init_resource_pool_mgr``: the actor role runs :class:`RhythmActorRolloutRefWorker`;
* ``_compute_old_log_prob``: the rhythm statistics of the batch come from verl's own old-log-prob
  forward of the actor (``credit_forward`` ``auto``, the default, or ``fused``; see :mod:`.fused`),
  or, with ``separate``, from one more no-grad forward of the actor right after it; either way
  gamma is stored beside the batch;
* ``_compute_advantage``: after verl's advantage estimator (GRPO), the token advantages become
  ``gamma * A`` where ``A >= 0`` and stay ``A`` where ``A < 0`` (docs/method.md section 5; ``shape=both``
  scales ``A < 0`` too, ``gamma_norm=mean`` makes gamma's mean over each response mask 1), and the
  ``rhythm/*`` metrics join the step's metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
from attnrhythm.integrations.verl.engine import check_actor_config
from attnrhythm.integrations.verl.layout import nested_to_padded
from attnrhythm.integrations.verl.worker import (
    COUNTS_FIELD,
    FUSED_FIELD,
    GAMMA_FIELD,
    HEADS_KEY,
    SETTINGS_KEY,
    SPAN_LAYERS_FIELD,
    SPANS_FIELD,
    STEP_KEY,
    RhythmActorRolloutRefWorker,
)
from attnrhythm.method.credit import CreditConfig, shape_advantages
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.rollout.credit import COUNT_KEYS, rhythm_metrics
from attnrhythm.rollout.heads import HeadRefresh
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
    advantages: torch.Tensor,
    gamma: torch.Tensor,
    response_mask: torch.Tensor,
    credit: CreditConfig | None = None,
) -> torch.Tensor:
    """:func:`attnrhythm.method.credit.shape_advantages` on verl tensors, in their layout.

    All three are (B, T) dense tensors or all three jagged nested tensors with the same row
    lengths (verl's no-padding layout); the result has the layout of ``advantages``. ``credit``
    gives ``gamma_norm`` and ``shape`` (default: the paper's rule).
    """
    nested = [t.is_nested for t in (advantages, gamma, response_mask)]
    if any(nested) and not all(nested):
        raise AttnRhythmError("advantages, gamma and response_mask must all be nested or all dense")
    if not nested[0]:
        return shape_advantages(advantages, gamma, response_mask, credit)
    offsets = advantages.offsets()
    for other in (gamma, response_mask):
        if not torch.equal(other.offsets().to(offsets.device), offsets):
            raise AttnRhythmError("gamma and the advantages have different response lengths")
    # row by row on the padded grid (gamma_norm needs each row's mean), back to the jagged rows
    padded = shape_advantages(
        nested_to_padded(advantages), nested_to_padded(gamma), nested_to_padded(response_mask), credit
    )
    lengths = offsets.diff().to(padded.device)
    real = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return torch.nested.nested_tensor_from_jagged(padded[real].contiguous(), offsets=offsets)


def _absolute(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def dense_rows(field: torch.Tensor) -> torch.Tensor:
    """A per-row field of equal-shaped rows as a dense tensor (TransferQueue hands them back nested)."""
    if field.is_nested:
        return torch.stack(list(field.unbind()))
    return field


@contextmanager
def _credit_request(
    batch: KVBatchMeta, settings: RhythmCreditConfig, step: int, refresh: HeadRefresh | None
) -> Iterator[None]:
    """The credit settings, step and (``refresh:K``) head set ride in the batch's extra info."""
    batch.extra_info[SETTINGS_KEY] = settings.flat()
    batch.extra_info[STEP_KEY] = int(step or 0)
    if refresh is not None:
        batch.extra_info[HEADS_KEY] = refresh.heads
    try:
        yield
    finally:
        for key in (SETTINGS_KEY, STEP_KEY, HEADS_KEY):
            batch.extra_info.pop(key, None)


def count_rows(counts: torch.Tensor) -> torch.Tensor:
    """A per-row field (the (B, K) counts, the (B,) fused flags) dense: TransferQueue hands it back nested."""
    if counts.is_nested:
        rows = dense_rows(counts)
        return rows.reshape(rows.shape[0], -1)
    return counts


def batch_totals(counts: torch.Tensor, tags: list[dict[str, Any]]) -> dict[str, float]:
    """:data:`COUNT_KEYS` totals over the rows that are real rollouts (verl's filler rows left out).

    ``counts`` (B, K) holds each row's counts; ``tags`` are the batch's TransferQueue tags, where
    verl marks the rows it adds to pad a batch to a multiple of the data-parallel size with
    ``is_padding``.
    """
    rows = count_rows(counts).to(torch.float64)
    if rows.shape != (len(tags), len(COUNT_KEYS)):
        raise AttnRhythmError(
            f"rhythm counts of shape {tuple(rows.shape)} do not match a batch of {len(tags)} rows"
        )
    keep = torch.tensor([not tag.get("is_padding", False) for tag in tags], dtype=torch.bool)
    return dict(zip(COUNT_KEYS, rows[keep].sum(0).tolist()))


@register_trainer(MODE)
class RhythmPPOTrainer(PPOTrainerSync):
    """verl's synchronous PPO trainer with attention-rhythm credit on the token advantages.

    verl decides several things by the trainer's mode name (``trainer_mode == "sync"``: the replay
    buffer that keeps failed groups, the dataloader's ``gen_batch_size``, no TransferQueue state in
    checkpoints, no in-flight prompts re-issued on resume). This mode is the sync trainer in every
    one of them: :attr:`trainer_mode` reads ``"sync"``, while ``config.trainer.v1.trainer_mode``
    stays ``rhythm_grpo`` and the mode's own section (``trainer.v1.rhythm_grpo``) holds its settings,
    ``parameter_sync_step`` included.
    """

    def __init__(self, config: DictConfig) -> None:
        self.rhythm = rhythm_settings(config)  # a bad setting fails before any worker starts
        check_actor_config(config)  # so does an actor setup the credit cannot analyse
        correction = OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False)
        if self.rhythm.credit_forward == "fused" and self.rhythm.strategy != "none" and correction:
            raise AttnRhythmError(
                f"trainer.v1.{MODE}.credit_forward=fused needs verl's old-log-prob forward, which "
                "algorithm.rollout_correction.bypass_mode=true skips: use credit_forward=auto or separate"
            )
        super().__init__(config)
        section = OmegaConf.select(config, f"trainer.v1.{MODE}", default=None) or {}
        self.parameter_sync_step = section.get("parameter_sync_step", 1)
        self._rhythm_seconds = 0.0
        analysis = self.rhythm.analysis_config()
        self.head_refresh: HeadRefresh | None = None  # heads: refresh:K
        if analysis.heads_refresh and self.rhythm.strategy != "none":
            self.head_refresh = HeadRefresh(analysis.heads_refresh, analysis.head_quantile)

    @property
    def trainer_mode(self) -> str:
        """``"sync"``: verl's decisions by mode name are the synchronous trainer's."""
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        self.configured_mode = value  # what the config asked for (rhythm_grpo)

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in _ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(RhythmActorRolloutRefWorker)

    def _bypasses_old_log_prob(self) -> bool:
        """verl's rollout-correction bypass mode: old log-probs are the rollout's, no actor forward."""
        correction = self.config.algorithm.get("rollout_correction", None)
        return bool(correction and correction.get("bypass_mode", False))

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        self._rhythm_seconds = 0.0
        if self.rhythm.strategy == "none":
            return super()._compute_old_log_prob(batch, metrics)
        step = int(getattr(self, "global_steps", 0))
        refresh = self.head_refresh
        if refresh is not None:
            done = max(step - 1, 0)  # steps completed before this one (verl counts from 1)
            if refresh.due(done):
                metrics.update({f"rhythm/{k}": v for k, v in refresh.refresh(done).items()})
        if self.rhythm.credit_forward != "separate" and not self._bypasses_old_log_prob():
            # the actor's compute_log_prob carries the credit (fused, or separate right after it)
            with _credit_request(batch, self.rhythm, step, refresh):
                batch = super()._compute_old_log_prob(batch, metrics)
        else:
            batch = super()._compute_old_log_prob(batch, metrics)
            started = time.perf_counter()
            with _credit_request(batch, self.rhythm, step, refresh):
                self.actor_rollout_wg.compute_rhythm_credit(batch)
            self._rhythm_seconds = time.perf_counter() - started
        if refresh is not None:
            self._collect_spans(batch)
            metrics["rhythm/heads_refreshes"] = float(refresh.refreshes)
        return batch

    def _collect_spans(self, batch: KVBatchMeta) -> None:
        """Add the head spans of this batch's analysed real rollouts to the refresh corpus."""
        assert self.head_refresh is not None
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[SPANS_FIELD, SPAN_LAYERS_FIELD]
        )
        spans, layers = (dense_rows(data[name]) for name in (SPANS_FIELD, SPAN_LAYERS_FIELD))
        rows = [
            b
            for b, tag in enumerate(batch.tags)
            if not tag.get("is_padding", False) and not torch.isnan(spans[b]).any()
        ]
        if rows:
            self.head_refresh.add([int(x) for x in layers[rows[0]].reshape(-1)], [spans[b] for b in rows])

    def _step_folder(self) -> str:
        """The checkpoint folder of the current step, as verl names it (absolute)."""
        step = f"global_step_{self.global_steps}"
        return _absolute(os.path.join(self.config.trainer.default_local_dir, step))

    def _save_checkpoint(self) -> None:
        """verl's checkpoint, with ``rhythm_heads.json`` (the head refresh state) under ``refresh:K``.

        The head state is written first, so verl's ``latest_checkpointed_iteration.txt`` never
        names a checkpoint without it.
        """
        if self.head_refresh is not None:
            folder = self._step_folder()
            os.makedirs(folder, exist_ok=True)
            self.head_refresh.save(folder)
        super()._save_checkpoint()

    def _load_checkpoint(self) -> None:
        """verl's resume; a ``refresh:K`` run also restores the head set of the checkpoint."""
        super()._load_checkpoint()
        if self.head_refresh is None or self.global_steps <= 0:
            return
        trainer = self.config.trainer
        resumed = trainer.resume_from_path if trainer.resume_mode == "resume_path" else None
        self.head_refresh.load(_absolute(str(resumed)) if resumed else self._step_folder())

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_advantage(batch, metrics)
        return self._shape_advantages(batch, metrics)

    def _shape_advantages(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """GRPO's advantages in the TransferQueue become ``gamma * A`` where ``A >= 0``.

        Everything is computed before the one write back, so an error leaves the batch as verl's
        estimator wrote it (no half-shaped step); the ``rhythm/*`` metrics count real rollouts only.
        """
        if self.rhythm.strategy == "none":
            metrics.update(rhythm_metrics({}, 0.0))  # plain GRPO: gamma = 1, nothing amplified
            return batch
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["advantages", "response_mask", GAMMA_FIELD, COUNTS_FIELD, FUSED_FIELD],
        )
        shaped = shape_verl_advantages(
            data["advantages"], data[GAMMA_FIELD], data["response_mask"], self.rhythm.credit_config()
        )
        logged = rhythm_metrics(batch_totals(data[COUNTS_FIELD], batch.tags), self._rhythm_seconds)
        # 1: the statistics came from verl's own old-log-prob forward on every rank, 0: separate forward
        logged["rhythm/fused"] = float(count_rows(data[FUSED_FIELD]).min())
        batch = tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"advantages": shaped}, batch_size=len(batch)),
        )
        metrics.update(logged)
        return batch
