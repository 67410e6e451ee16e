"""verl's hybrid actor worker with one more method: the rhythm credit of a rollout batch.

:class:`RhythmActorRolloutRefWorker` is verl 0.9's ``ActorRolloutRefWorker`` (the Ray worker that
holds the actor's training engine, e.g. ``FSDPEngineWithLMHead``, plus rollout and reference) with
:meth:`~RhythmActorRolloutRefWorker.compute_rhythm_credit`, registered like verl's own
``compute_log_prob``: the single controller splits the batch over the actor's data-parallel
ranks, each rank analyses its slice with the engine's live module (FSDP2 parameters are gathered
for the forward), and the outputs go back to the TransferQueue under the batch's keys.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from attnrhythm.errors import AttnRhythmError
from attnrhythm.integrations.verl.credit import batch_credit
from attnrhythm.integrations.verl.engine import causal_lm
from attnrhythm.rollout.config import RhythmCreditConfig

SETTINGS_KEY = "rhythm_credit"  # non-tensor entry of the batch: the RhythmCreditConfig fields
STEP_KEY = "rhythm_step"  # non-tensor entry of the batch: the trainer's global step
HEADS_KEY = "rhythm_heads"  # non-tensor entry of the batch: the refreshed head set (heads: refresh:K)
GAMMA_FIELD = "rhythm_gamma"
COUNTS_FIELD = "rhythm_counts"
SPANS_FIELD = "rhythm_spans"  # (B, L, H) head spans of each row, NaN where not analysed (refresh:K)
SPAN_LAYERS_FIELD = "rhythm_span_layers"  # (B, L): the analysed layers of those spans


class RhythmActorRolloutRefWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` that can also compute attention-rhythm credit with its actor."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_rhythm_credit(self, data: TensorDict) -> TensorDict | None:
        """Rhythm credit of this rank's slice of a rollout batch, from the current actor.

        ``data`` carries ``prompts``, ``responses``, ``response_mask`` (plus ``attention_mask`` in
        the padded layout) and the non-tensor entries ``rhythm_credit`` (a dict of
        :class:`RhythmCreditConfig` fields), ``rhythm_step`` and, with ``heads: refresh:K``,
        ``rhythm_heads`` (the trainer's head set in use; None before the first refresh). Returns
        ``rhythm_gamma``, laid out like ``responses`` (nested or padded), and ``rhythm_counts``
        (B, K): each row's token counts (:data:`~attnrhythm.rollout.credit.COUNT_KEYS`), so the
        trainer sums the rows it keeps (verl's filler rows left out); with ``refresh:K`` also
        ``rhythm_spans`` (B, L, H) and ``rhythm_span_layers`` (B, L) for the next refresh. Every
        actor rank must take part.
        """
        if self.actor is None:
            raise AttnRhythmError(f"rhythm credit needs the actor, but this worker's role is {self.role!r}")
        settings = RhythmCreditConfig(**(tu.get(data, SETTINGS_KEY, None) or {}))
        step = int(tu.get(data, STEP_KEY, 0) or 0)
        engine = self.actor.engine
        head_set = tu.get(data, HEADS_KEY, None)
        with engine.eval_mode(), causal_lm(engine.module) as model:  # eval_mode loads offloaded params
            credit = batch_credit(
                model,
                data,
                settings,
                step=step,
                rank=engine.get_data_parallel_rank(),
                head_set=head_set or None,
            )
        if not engine.is_mp_src_rank_with_outputs():
            return None
        rows = data.batch_size[0]
        fields = {GAMMA_FIELD: credit.gamma, COUNTS_FIELD: credit.counts}
        if credit.spans is not None and credit.layers is not None:
            fields[SPANS_FIELD] = credit.spans
            layers = torch.tensor(credit.layers, dtype=torch.int64)
            fields[SPAN_LAYERS_FIELD] = layers.expand(rows, -1).clone()
        return TensorDict(fields, batch_size=[rows])
