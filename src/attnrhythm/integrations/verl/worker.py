"""verl's hybrid actor worker, with the rhythm credit of a rollout batch.

:class:`RhythmActorRolloutRefWorker` is verl 0.9's ``ActorRolloutRefWorker`` (the Ray worker that
holds the actor's training engine, e.g. ``FSDPEngineWithLMHead``, plus rollout and reference) with
two entries, registered like verl's own ``compute_log_prob`` (the single controller splits the
batch over the actor's data-parallel ranks; the outputs go back to the TransferQueue under the
batch's keys):

* ``compute_log_prob``: verl's, and when the batch carries the credit settings (the old-log-prob
  call of ``rhythm_grpo``) the rhythm statistics are captured inside that very forward
  (:mod:`.fused`, ``credit_forward`` ``auto``/``fused``); where that forward cannot carry them,
  ``auto`` runs the separate credit forward right after it (the reason logged once) and ``fused``
  fails with the reason;
* ``compute_rhythm_credit``: the separate credit forward alone (``credit_forward=separate``).

Both return ``rhythm_gamma``, ``rhythm_counts`` and ``rhythm_fused`` (1 per row where the
statistics came from verl's forward, 0 from the separate one).
"""

from __future__ import annotations

import logging

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from attnrhythm.attention.sharding import agreed_count
from attnrhythm.errors import AttnRhythmError
from attnrhythm.integrations.verl.credit import BatchCredit, batch_credit, captured_credit, streaming_analyzer
from attnrhythm.integrations.verl.engine import causal_lm, peft_base
from attnrhythm.integrations.verl.fused import FusedCapture, capturing_forwards, static_reason
from attnrhythm.integrations.verl.layout import padded_rollout
from attnrhythm.rollout.config import RhythmCreditConfig

SETTINGS_KEY = "rhythm_credit"  # non-tensor entry of the batch: the RhythmCreditConfig fields
STEP_KEY = "rhythm_step"  # non-tensor entry of the batch: the trainer's global step
HEADS_KEY = "rhythm_heads"  # non-tensor entry of the batch: the refreshed head set (heads: refresh:K)
GAMMA_FIELD = "rhythm_gamma"
COUNTS_FIELD = "rhythm_counts"
SPANS_FIELD = "rhythm_spans"  # (B, L, H) head spans of each row, NaN where not analysed (refresh:K)
SPAN_LAYERS_FIELD = "rhythm_span_layers"  # (B, L): the analysed layers of those spans
FUSED_FIELD = "rhythm_fused"  # (B,): 1 where the statistics came from verl's forward, 0 separate

logger = logging.getLogger(__name__)
_REPORTED: set[str] = set()  # fallback reasons already logged by this process


def _report_once(reason: str) -> None:
    if reason not in _REPORTED:
        _REPORTED.add(reason)
        logger.warning("rhythm credit: separate forward (credit_forward=auto): %s", reason)


class RhythmActorRolloutRefWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` that can also compute attention-rhythm credit with its actor."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_rhythm_credit(self, data: TensorDict) -> TensorDict | None:
        """Rhythm credit of this rank's slice of a rollout batch, from the current actor.

        ``data`` carries ``prompts``, ``responses``, ``response_mask`` (plus ``attention_mask`` in
        the padded layout) and the non-tensor entries ``rhythm_credit`` (a dict of
        :class:`RhythmCreditConfig` fields), ``rhythm_step`` and, with ``heads: refresh:K``,
        ``rhythm_heads`` (the trainer's head set in use; None before the first refresh). Returns
        ``rhythm_gamma``, laid out like ``responses`` (nested or padded), ``rhythm_counts``
        (B, K): each row's token counts (:data:`~attnrhythm.rollout.credit.COUNT_KEYS`), so the
        trainer sums the rows it keeps (verl's filler rows left out), and ``rhythm_fused`` (0);
        with ``refresh:K`` also ``rhythm_spans`` (B, L, H) and ``rhythm_span_layers`` (B, L) for
        the next refresh. Every actor rank must take part.
        """
        settings, step = self._rhythm_request(data)
        credit = self._separate_credit(data, settings, step)
        if not self.actor.engine.is_mp_src_rank_with_outputs():
            return None
        rows = data.batch_size[0]
        return TensorDict(_credit_fields(credit, rows, fused=False), batch_size=[rows])

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict | None:
        """verl's ``compute_log_prob``; with the credit settings in ``data``, the rhythm credit too.

        Without ``rhythm_credit`` among the non-tensor entries this is verl's method unchanged
        (e.g. the reference log-probs). With it (``rhythm_grpo``'s old-log-prob call) the outputs
        also hold what :meth:`compute_rhythm_credit` returns, ``rhythm_fused`` 1 where the
        statistics were captured in verl's forward.
        """
        if tu.get(data, SETTINGS_KEY, None) is None:
            return super().compute_log_prob(data)
        settings, step = self._rhythm_request(data)
        tu.pop(data, SETTINGS_KEY)  # verl's own call sees its own entries only
        tu.pop(data, STEP_KEY, None)
        why = static_reason(settings, self.actor.engine)
        if why:
            _check_fallback(settings, why)  # before any forward
            output, credit = super().compute_log_prob(data), None
        else:
            output, credit, why = self._captured_log_prob(data, settings, step)
            if credit is None:
                _check_fallback(settings, why)
        if credit is None:
            credit = self._separate_credit(data, settings, step)
        if output is None:
            return None
        for name, value in _credit_fields(credit, data.batch_size[0], fused=not why).items():
            output[name] = value
        return output

    def _captured_log_prob(
        self, data: TensorDict, settings: RhythmCreditConfig, step: int
    ) -> tuple[TensorDict | None, BatchCredit | None, str]:
        """verl's ``compute_log_prob`` with the credit captured in its forwards.

        Returns verl's output, the credit or None, and why not ('' when captured). Every rank
        takes the same route: the separate forward is a collective under FSDP2.
        """
        engine = self.actor.engine
        rollout = padded_rollout(data)
        model = peft_base(engine.module) or engine.module  # where the attention implementation lives
        with streaming_analyzer(model, settings.analysis_config()) as analyzer:
            fused = FusedCapture(analyzer, rollout)
            with capturing_forwards(engine.module, fused):
                output = super().compute_log_prob(data)
        why = fused.reason or (
            f"{fused.missing} analysable row(s) were not found in verl's forward" if fused.missing else ""
        )
        if agreed_count(int(bool(why)), engine.module) and not why:
            why = "another rank's forward could not carry the credit"
        if why:
            return output, None, why
        rank = engine.get_data_parallel_rank()
        return output, captured_credit(fused.results, rollout, settings, step=step, rank=rank), ""

    def _rhythm_request(self, data: TensorDict) -> tuple[RhythmCreditConfig, int]:
        if self.actor is None:
            raise AttnRhythmError(f"rhythm credit needs the actor, but this worker's role is {self.role!r}")
        settings = RhythmCreditConfig(**(tu.get(data, SETTINGS_KEY, None) or {}))
        return settings, int(tu.get(data, STEP_KEY, 0) or 0)

    def _separate_credit(self, data: TensorDict, settings: RhythmCreditConfig, step: int) -> BatchCredit:
        """The separate credit forward on this rank's slice (every actor rank must take part)."""
        engine = self.actor.engine
        head_set = tu.get(data, HEADS_KEY, None)
        with engine.eval_mode(), causal_lm(engine.module) as model:  # eval_mode loads offloaded params
            return batch_credit(
                model,
                data,
                settings,
                step=step,
                rank=engine.get_data_parallel_rank(),
                head_set=head_set or None,
            )


def _check_fallback(settings: RhythmCreditConfig, why: str) -> None:
    """``fused`` fails with the reason in one line; ``auto`` logs it once and goes on separately."""
    if settings.credit_forward == "fused":
        raise AttnRhythmError(
            f"credit_forward=fused: verl's compute_log_prob forward cannot carry the rhythm credit ({why}): "
            "use credit_forward=auto or separate"
        )
    _report_once(why)


def _credit_fields(credit: BatchCredit, rows: int, *, fused: bool) -> dict[str, torch.Tensor]:
    fields = {
        GAMMA_FIELD: credit.gamma.cpu(),
        COUNTS_FIELD: credit.counts.cpu(),
        FUSED_FIELD: torch.full((rows,), float(fused), dtype=torch.float32),
    }
    if credit.spans is not None and credit.layers is not None:
        fields[SPANS_FIELD] = credit.spans
        layers = torch.tensor(credit.layers, dtype=torch.int64)
        fields[SPAN_LAYERS_FIELD] = layers.expand(rows, -1).clone()
    return fields
