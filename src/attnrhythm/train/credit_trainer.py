"""GRPO with attention-rhythm credit: TRL's ``GRPOTrainer`` plus the credit of the current policy.

TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` generates a rollout batch, scores it,
and returns a dict whose ``advantages`` are one value per sequence, shape (B,), for this
process' slice; ``_compute_loss`` accepts those or token-level (B, T) advantages. The *current*
policy's attention over each prompt + completion (the weights that just generated the batch, no
gradients) gives gamma for the configured strategy, and the advantages become

    A~[b, t] = gamma[b, t] * A[b]   where A[b] >= 0,
    A~[b, t] = A[b]                 where A[b] <  0        (docs/method.md section 5),

or the variants ``RhythmCreditConfig.shape="both"`` (gamma scales A[b] < 0 too) and
``gamma_norm="mean"`` (gamma divided by its mean over the row's loss tokens first), both in
:func:`attnrhythm.method.credit.shape_advantages`.

Everything downstream (buffering over ``steps_per_generation``, shuffling, every loss type)
treats the (B, T) advantages like TRL's own.

Where the attention statistics come from (``RhythmCreditConfig.credit_forward``; the path taken
is ``self.rhythm_credit_path`` and the metric ``rhythm/fused``):

* ``old-logps`` (``fused`` or ``auto``, when TRL computes ``old_per_token_logps``): TRL runs a
  no-grad forward of the current policy over the same rollouts (``num_iterations > 1``, gradient
  accumulation not dividing the generation period, vLLM importance-sampling correction). The hook
  ``_get_per_token_logps_and_entropies`` activates a capture (``attnrhythm`` attention, response
  rows weighted) around exactly that call -- the first no-grad call after generation -- and
  ``_generate_and_score_completions`` shapes the rollout batch's advantages from it.
* ``loss`` (``fused`` or ``auto``, when TRL runs no such forward: its default,
  ``num_iterations=1``): the first forward of the current policy after generation is the loss
  forward itself. ``_compute_loss`` marks the micro-batch; ``_get_per_token_logps_and_entropies``
  captures the statistics inside its (gradient-carrying) forward -- the reductions run without
  gradients and every layer's output stays SDPA's, so the log-probs, the loss and its gradients
  are those of the forward without the capture -- and, before TRL reads ``inputs["advantages"]``
  and reduces the loss, replaces that micro-batch's (B,) advantages by the shaped (B, T) ones.
  Each micro-batch of a gradient-accumulation window is shaped in its own loss forward (the same
  weights as at generation: no optimiser step happens in between). The ``entropy`` strategy takes
  its entropy from the same forward (TRL computes it there), which is docs/method.md's untempered
  entropy only at ``temperature`` 1.0; at any other temperature it keeps the separate forward.
* ``separate``: one extra no-grad forward per chunk of sequences (:func:`rollout_gamma`), the
  policy prepared with TRL's own ``unwrap_model_for_generation`` as for generation.

The captured forwards run in TRL's mode (training, under TRL's autocast): for a model with dropout
the statistics would then carry dropout noise, which the separate forward (eval mode) does not;
the decoder LLMs this targets have none.

Liger (``use_liger_kernel=True``): in TRL 1.16 it is deprecated and applies Liger's layer kernels
only (RMSNorm, RoPE, SwiGLU; TRL refuses the fused linear cross-entropy, which would replace the
forward); the loss stays TRL's ``_compute_loss``, which takes the (B, T) advantages, and attention
still goes through transformers' attention interface. So rhythm credit is accepted with it.

Distributed notes (what the tests cover is said for each):

* DDP (``accelerate launch --multi_gpu`` / ``torchrun``): the per-rank credit needs no
  communication; the ``rhythm/*`` metrics are gathered over ranks. Tested with 2 gloo CPU
  processes under ``torchrun`` (tests/test_train_distributed.py), all three paths.
* FSDP2 (``fully_shard``): the separate forward calls the decoder and the LM head on their own,
  so :mod:`attnrhythm.attention.sharding` unshards the modules whose hooks that skips (root, head path) and
  every rank runs the same number of credit forwards (dummy chunks pad the ranks with fewer
  analysable sequences). The fused capture runs inside TRL's full-model forward, where FSDP2's
  own hooks gather the parameters. Tested: rollout_gamma, the fused capture and this class'
  ``_apply_rhythm_credit`` on a ``fully_shard``-ed model in 2 gloo ranks with uneven batches
  (tests/test_sharding.py). Not tested: the whole trainer under accelerate's FSDP2 plugin
  (accelerate falls back to DDP for FSDP on CPU).
  ``unwrap_model_for_generation`` returns the FSDP2 module itself (it is not a wrapper), and
  TRL's ``summon_full_params`` is a no-op for FSDP2.
* FSDP1: parameters are summoned like TRL does for generation. Untested.
* DeepSpeed ZeRO-3: with ``ds3_gather_for_generation=True`` (TRL's default) the partitioned
  weights are gathered with ``deepspeed.zero.GatheredParameters`` for the separate forward, so
  every rank briefly holds the full model, exactly as during generation; the fused capture runs
  in TRL's own forward. With ``ds3_gather_for_generation=False`` the separate forward runs on the
  partitioned model through ZeRO-3's fetch hooks, the ranks agreeing on the number of credit
  forwards as under FSDP2; that path is untested (the analysis calls the LM head on its own).
  ZeRO-1/2 need nothing special. None of this is run here (no DeepSpeed on CPU); a unit test
  checks that ``ds3_gather_for_generation`` reaches TRL's unwrap.
* vLLM (server or colocate): completions come from vLLM, the credit uses the training model, i.e.
  the current policy as the method requires; vLLM's own attention is unaffected. Untested here.
* PEFT: the forward goes through ``get_base_model()`` (the adapted model, adapters active).
* Vision-language batches (images) are refused: the credit forward is text-only.
* Multi-turn tool calls: tool-result tokens are part of the analysed response (they are in the
  context the policy attended to) but keep gamma = 1 (they are outside the loss mask).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

try:
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
except ImportError as err:  # pragma: no cover - exercised only without the extra
    from attnrhythm.errors import AttnRhythmError

    raise AttnRhythmError(
        "attnrhythm.train needs TRL: install it with pip install 'attnrhythm[train]'"
    ) from err

from attnrhythm.analyze import Analyzer, TraceResult
from attnrhythm.config import AnalysisConfig
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.credit import shape_advantages
from attnrhythm.rollout.credit import (
    COUNT_KEYS,
    capturing_rollout,
    credit_from_results,
    rhythm_metrics,
    rollout_gamma,
)
from attnrhythm.rollout.heads import HeadRefresh, refreshed_config
from attnrhythm.train.config import RhythmCreditConfig, trl_runs_old_logps_forward

_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "num_images")
CREDIT_PATH_CODES: dict[str, float] = {"separate": 0.0, "old-logps": 1.0, "loss": 2.0}  # rhythm/fused


class RhythmGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages are shaped by attention-rhythm credit.

    Takes every argument of ``GRPOTrainer`` plus ``rhythm`` (a :class:`RhythmCreditConfig`;
    default: coupled credit with docs/method.md's parameters). With ``strategy="none"`` it is plain
    GRPO: no credit forward, advantages untouched.

    Unless the strategy is ``none``, the policy is switched to the ``attnrhythm`` attention
    implementation at construction (plain SDPA outside a capture), so generation, the loss and
    the credit forward all use the same attention code.

    Logged metrics (TRL's ``_metrics``, averaged per logging step): ``rhythm/gamma_mean`` and
    ``rhythm/amplified_share`` (over completion tokens in the loss mask), ``rhythm/<role>_share``
    for preplan, anchor, dominated and intro, ``rhythm/analysed_share`` (sequences with >= 2
    completion tokens that were analysed), ``rhythm/fused`` (where the statistics came from:
    0 a separate forward, 1 TRL's old-logprob forward, 2 TRL's loss forward; see
    :data:`CREDIT_PATH_CODES`) and ``rhythm/seconds`` (wall time of the credit: the separate
    forward and the shaping; in the fused paths the shaping only, since the reductions run inside
    TRL's forward and cannot be timed apart from it). In the ``loss`` path the metrics are logged
    per micro-batch (like TRL's own loss metrics), in the others per rollout batch.

    ``rhythm.heads = "refresh:K"`` (:class:`~attnrhythm.rollout.heads.HeadRefresh`): every K steps
    (counted at each rollout batch, before generation) the corpus head set is re-derived from the
    spans of the rollouts analysed since the last refresh (gathered over ranks); per-sequence
    classes until the first refresh. Logged: ``rhythm/heads_refreshes`` every batch, and on
    refresh steps ``rhythm/heads_traces`` plus, from the second refresh on,
    ``rhythm/heads_local_jaccard``, ``rhythm/heads_global_jaccard`` and ``rhythm/heads_changed``
    against the previous set. Each checkpoint gets ``rhythm_heads.json`` (``_save_checkpoint``);
    ``train(resume_from_checkpoint=...)`` restores it.
    """

    def __init__(self, *args: Any, rhythm: RhythmCreditConfig | None = None, **kwargs: Any) -> None:
        self.rhythm = rhythm if rhythm is not None else RhythmCreditConfig()
        if not isinstance(self.rhythm, RhythmCreditConfig):
            raise AttnRhythmError(f"rhythm must be a RhythmCreditConfig, not {type(self.rhythm).__name__}")
        every = self.rhythm.analysis_config().heads_refresh  # heads: refresh:K (parse_heads)
        self.head_refresh: HeadRefresh | None = None
        if every and self.rhythm.strategy != "none":
            self.head_refresh = HeadRefresh(every, self.rhythm.analysis_config().head_quantile)
        super().__init__(*args, **kwargs)
        self._rhythm_analyzer: Analyzer | None = None
        self._rhythm_fused_batch: _FusedBatch | None = None
        self._rhythm_loss_inputs: dict[str, Any] | None = None
        self.rhythm_credit_path = self._credit_path()
        self.rhythm_fused = self.rhythm_credit_path in ("old-logps", "loss")  # no forward of its own
        if self.rhythm.strategy != "none":
            # switches the policy to the attnrhythm attention implementation now, before any generation
            self._rhythm_analyzer = Analyzer(self._rhythm_policy(), self._rhythm_analysis_config())

    def trl_runs_old_logps_forward(self) -> bool:
        """Whether TRL runs its no-grad ``old_per_token_logps`` forward for every rollout batch."""
        vllm_is = getattr(self, "use_vllm", False) and getattr(
            self, "vllm_importance_sampling_correction", False
        )
        return trl_runs_old_logps_forward(
            self.args.gradient_accumulation_steps,
            self.args.steps_per_generation,
            self.num_iterations,
            bool(vllm_is),
        )

    def _credit_path(self) -> str:
        """Resolve ``rhythm.credit_forward``: ``none``, ``separate``, ``old-logps`` or ``loss``.

        ``fused`` that no forward of TRL can serve (only the ``entropy`` strategy: TRL's old-logprob
        forward computes no entropy, its loss forward a tempered one) is an error.
        """
        mode, strategy = self.rhythm.credit_forward, self.rhythm.strategy
        if strategy == "none":
            return "none"
        if mode == "separate":
            return "separate"
        old_logps = self.trl_runs_old_logps_forward()
        if strategy == "entropy" and (old_logps or self.temperature != 1.0):
            if mode == "fused":
                why = "TRL's old-logprob forward computes none" if old_logps else (
                    f"TRL's loss forward computes it at temperature {self.temperature}, not 1.0"
                )
                raise AttnRhythmError(
                    f"credit_forward 'fused' cannot give the entropy strategy its entropy ({why}): "
                    "use 'auto' or 'separate'"
                )
            return "separate"
        return "old-logps" if old_logps else "loss"

    # -- the hooks ----------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._refresh_heads()  # before generation: the fused capture runs inside TRL's forward
        path = self.rhythm_credit_path
        self._rhythm_fused_batch = _FusedBatch("old-logps") if path == "old-logps" else None
        try:
            output = super()._generate_and_score_completions(inputs)
            if path == "loss":  # (B,) advantages: each micro-batch is shaped in its loss forward
                _refuse_images(output)
                return output
            return self._apply_rhythm_credit(output)
        finally:
            self._rhythm_fused_batch = None

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's loss; in the ``loss`` path its policy forward also shapes this micro-batch's advantages.

        Only (B,) advantages are shaped: (B, T) ones were shaped already (a micro-batch used again).
        """
        armed = self.rhythm_credit_path == "loss" and inputs["advantages"].dim() == 1
        self._rhythm_loss_inputs = inputs if armed else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._rhythm_loss_inputs = None

    def _get_per_token_logps_and_entropies(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """TRL's per-token log-probs; a forward TRL runs anyway may also capture the rhythm statistics.

        ``old-logps`` path: the first no-grad call after generation (TRL's ``old_per_token_logps``,
        the policy itself). ``loss`` path: the policy's call inside :meth:`_compute_loss`, after
        which the micro-batch's advantages are shaped (before TRL reads them). Either runs chunk by
        chunk, as TRL does, each chunk inside a capture.
        """
        text_only = all(value is None for value in kwargs.values())
        fused, loss_inputs = self._rhythm_fused_batch, self._rhythm_loss_inputs
        old_logps = fused is not None and not fused.done and not torch.is_grad_enabled()
        if not text_only or not (old_logps or loss_inputs is not None):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **kwargs,
            )
        if loss_inputs is not None:
            self._rhythm_loss_inputs = None  # the policy's forward only
            fused = _FusedBatch("loss", row_offset=self._rhythm_micro_batch_offset(input_ids.size(0)))
        assert fused is not None
        fused.done = True
        with_entropy = fused.where == "loss" and self.rhythm.strategy == "entropy"
        analyzer = self._analyzer_for(self._causal_lm(self.accelerator.unwrap_model(model)))
        step = batch_size or input_ids.size(0)
        logps, entropies, aux = [], [], []
        for start in range(0, input_ids.size(0), step):
            ids, mask = input_ids[start : start + step], attention_mask[start : start + step]
            with capturing_rollout(
                analyzer, ids, mask, logits_to_keep, row_offset=start, keep_model_output=fused.where == "loss"
            ) as found:
                out = super()._get_per_token_logps_and_entropies(
                    model,
                    ids,
                    mask,
                    logits_to_keep,
                    batch_size=ids.size(0),
                    compute_entropy=compute_entropy or with_entropy,
                    compute_aux_loss=compute_aux_loss,
                    **kwargs,
                )
                if with_entropy:
                    found.entropy = out[1]
            fused.results.extend(found.results)
            logps.append(out[0])
            entropies.append(out[1])
            aux.append(out[2])
        if loss_inputs is not None:
            self._rhythm_fused_batch = fused
            try:
                self._apply_rhythm_credit(loss_inputs)
            finally:
                self._rhythm_fused_batch = None
        return (
            torch.cat(logps),
            torch.cat(entropies) if compute_entropy else None,
            torch.stack(aux).mean() if compute_aux_loss else None,
        )

    def _rhythm_micro_batch_offset(self, rows: int) -> int:
        """Row offset of the current training micro-batch in its rollout batch (0 in evaluation).

        TRL's ``_prepare_inputs`` serves micro-batch ``_step % steps_per_generation``; the offset
        keeps the random baseline's per-sequence seeds distinct between micro-batches of a step.
        """
        if not self.model.training:
            return 0
        return (self._step % self.args.steps_per_generation) * rows

    def _apply_rhythm_credit(self, output: dict[str, Any]) -> dict[str, Any]:
        """Replace ``output["advantages"]`` (B,) by rhythm-shaped (B, T) advantages (in place)."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if self.rhythm.strategy == "none":
            metrics["rhythm/gamma_mean"].append(1.0)
            metrics["rhythm/amplified_share"].append(0.0)
            metrics["rhythm/seconds"].append(0.0)
            return output
        _refuse_images(output)
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        started = time.perf_counter()
        seed_base = (self.state.global_step, self.accelerator.process_index)
        fused = self._rhythm_fused_batch
        captured = fused is not None and fused.done  # in TRL's old-logprob or loss forward
        if captured:
            credit = credit_from_results(
                self.rhythm.credit_config(),
                self.rhythm.strategy,
                fused.results,
                output["completion_ids"],
                output["completion_mask"],
                loss_mask,
                seed_base=seed_base,
                seed_row_offset=fused.row_offset,
            )
        else:
            with self._unwrapped_policy() as policy, torch.no_grad():
                credit = rollout_gamma(
                    self._analyzer_for(policy),
                    self.rhythm.strategy,
                    output["prompt_ids"],
                    output["prompt_mask"],
                    output["completion_ids"],
                    output["completion_mask"],
                    loss_mask,
                    batch_size=self.rhythm.batch_size,
                    seed_base=seed_base,
                )
        output["advantages"] = shape_advantages(
            output["advantages"], credit.gamma, loss_mask, self.rhythm.credit_config()
        )
        seconds = time.perf_counter() - started
        if self.head_refresh is not None:
            from accelerate.utils import gather_object

            spans = gather_object([s.tolist() for s in credit.spans])  # every rank: the same corpus
            self.head_refresh.add(self._rhythm_analyzer.layers, spans)
            metrics["rhythm/heads_refreshes"].append(float(self.head_refresh.refreshes))
        self._log_rhythm(metrics, credit.counts, seconds)
        metrics["rhythm/fused"].append(CREDIT_PATH_CODES[fused.where if captured else "separate"])
        return output

    # -- head sets that follow training (heads: refresh:K) --------------------------------------
    def _refresh_heads(self) -> None:
        """Re-derive the corpus head set when K steps have passed since the last refresh."""
        refresh = self.head_refresh
        if refresh is None or not refresh.due(self.state.global_step):
            return
        change = refresh.refresh(self.state.global_step)
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name, value in change.items():
            metrics[f"rhythm/{name}"].append(value)
        self._rhythm_analyzer = None  # the next credit forward uses the new head set

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint, plus ``rhythm_heads.json`` (the head refresh state) with ``refresh:K``."""
        super()._save_checkpoint(model, trial)
        if self.head_refresh is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.head_refresh.save(os.path.join(self._get_output_dir(trial=trial), folder))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a resumed ``refresh:K`` run first restores the checkpoint's head set."""
        if self.head_refresh is not None and resume_from_checkpoint:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint:
                self.head_refresh.load(checkpoint)
                self._rhythm_analyzer = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # -- helpers ------------------------------------------------------------------------
    def _rhythm_analysis_config(self) -> AnalysisConfig:
        """The credit's analysis settings, with the refreshed head set once there is one."""
        heads = self.head_refresh.heads if self.head_refresh is not None else None
        return refreshed_config(self.rhythm.analysis_config(), heads)

    def _analyzer_for(self, policy: torch.nn.Module) -> Analyzer:
        if self._rhythm_analyzer is None or self._rhythm_analyzer.model is not policy:
            self._rhythm_analyzer = Analyzer(policy, self._rhythm_analysis_config())
        return self._rhythm_analyzer

    @staticmethod
    def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
        """A PEFT model's adapted transformers model (adapters active); any other model as is."""
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            return model.get_base_model()
        return model

    def _rhythm_policy(self) -> torch.nn.Module:
        """The current policy as a plain transformers model (unwrapped; PEFT: the adapted base)."""
        return self._causal_lm(self.accelerator.unwrap_model(self.model))

    @contextmanager
    def _unwrapped_policy(self) -> Iterator[torch.nn.Module]:
        """The policy ready for a no-grad forward, the way TRL prepares it for generation.

        ``trl.models.unwrap_model_for_generation`` unwraps DDP/DeepSpeed, switches gradient
        checkpointing off for the duration and, under ZeRO-3 with ``ds3_gather_for_generation``
        (the default), gathers the partitioned weights with ``deepspeed.zero.GatheredParameters``
        and detaches ZeRO-3's fetch hooks meanwhile. FSDP1 parameters are summoned like TRL does.
        """
        dist = getattr(self, "_dist", None)
        full_params = dist.summon_full_params(self.model_wrapped, recurse=False) if dist else nullcontext()
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            full_params,
        ):
            yield self._causal_lm(unwrapped)

    def _log_rhythm(self, metrics: dict[str, list[float]], counts: dict[str, float], seconds: float) -> None:
        local = torch.tensor([counts[key] for key in COUNT_KEYS], dtype=torch.float32)
        local = local.to(self.accelerator.device)
        totals = self.accelerator.gather(local).view(-1, len(COUNT_KEYS)).sum(0).tolist()
        elapsed = torch.tensor([seconds], dtype=torch.float32, device=self.accelerator.device)
        slowest = float(self.accelerator.gather(elapsed).max())
        for name, value in rhythm_metrics(dict(zip(COUNT_KEYS, totals)), slowest).items():
            metrics[name].append(value)


def _refuse_images(batch: dict[str, Any]) -> None:
    if any(key in batch for key in _IMAGE_KEYS):
        raise AttnRhythmError(
            "rhythm credit is text-only: this batch has images; use strategy 'none' for VLM training"
        )


class _FusedBatch:
    """The capture of one batch in a forward TRL runs (``where``: ``old-logps`` or ``loss``).

    ``old-logps``: armed before generation, filled by TRL's old-logprob forward over the rollout
    batch. ``loss``: one micro-batch, filled by its loss forward; ``row_offset`` is the micro-batch's
    offset in the rollout batch (the random baseline's seeds).
    """

    def __init__(self, where: str, row_offset: int = 0) -> None:
        self.where = where
        self.row_offset = row_offset
        self.done = False
        self.results: list[tuple[int, TraceResult]] = []
