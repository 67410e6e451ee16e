"""GRPO with attention-rhythm credit: TRL's ``GRPOTrainer`` plus one no-grad credit forward.

TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` generates a rollout batch, scores it,
and returns a dict whose ``advantages`` are one value per sequence, shape (B,), for this
process' slice; ``_compute_loss`` accepts those or token-level (B, T) advantages. That method
is the one hook overridden here: after TRL has computed the group-normalised advantages, the
*current* policy (the weights that just generated the batch) reads each prompt + completion in
one streaming forward (:class:`~attnrhythm.analyze.Analyzer`, no gradients), gamma is computed
for the configured strategy, and the advantages become

    A~[b, t] = gamma[b, t] * A[b]   where A[b] >= 0,
    A~[b, t] = A[b]                 where A[b] <  0        (METHOD.md section 5).

Everything downstream (buffering over ``steps_per_generation``, shuffling, every loss type)
treats the (B, T) advantages like TRL's own.

Distributed notes:

* The policy is prepared with TRL's own ``unwrap_model_for_generation`` (as for generation):
  DDP/DeepSpeed wrappers are removed and gradient checkpointing is off during the forward.
* DeepSpeed ZeRO-3: with ``ds3_gather_for_generation=True`` (TRL's default) the partitioned
  weights are gathered with ``deepspeed.zero.GatheredParameters`` for the credit forward, so
  every rank briefly holds the full model, exactly as during generation. With
  ``ds3_gather_for_generation=False`` the forward runs on the partitioned model through
  ZeRO-3's fetch hooks; that path is untested (the analysis calls the LM head on its own,
  outside the model's forward). ZeRO-1/2 need nothing special. None of this is tested here
  (no DeepSpeed on CPU).
* FSDP1: parameters are summoned as TRL does for generation; FSDP2 works through its hooks.
  Untested.
* vLLM (server or colocate): completions come from vLLM, the credit forward uses the training
  model, i.e. the current policy as the method requires; vLLM's own attention is unaffected.
  Untested here (no vLLM on CPU).
* PEFT: the forward goes through ``get_base_model()`` (the adapted model, adapters active).
* Vision-language batches (images) are refused: the credit forward is text-only.
* Multi-turn tool calls: tool-result tokens are part of the analysed response (they are in the
  context the policy attended to) but keep gamma = 1 (they are outside the loss mask).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

try:
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
except ImportError as err:  # pragma: no cover - exercised only without the extra
    from ..errors import AttnRhythmError

    raise AttnRhythmError(
        "attnrhythm.train needs TRL: install it with pip install 'attnrhythm[train]'"
    ) from err

from ..analyze import Analyzer
from ..credit import shape_advantages
from ..errors import AttnRhythmError
from .config import RhythmCreditConfig
from .shaping import ROLE_NAMES, rollout_gamma

_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "num_images")
_COUNT_KEYS = ("sequences", "analysed", "tokens", "gamma_sum", "amplified", *ROLE_NAMES)


class RhythmGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages are shaped by attention-rhythm credit.

    Takes every argument of ``GRPOTrainer`` plus ``rhythm`` (a :class:`RhythmCreditConfig`;
    default: coupled credit with METHOD.md's parameters). With ``strategy="none"`` it is plain
    GRPO: no credit forward, advantages untouched.

    Unless the strategy is ``none``, the policy is switched to the ``attnrhythm`` attention
    implementation at construction (plain SDPA outside a capture), so generation, the loss and
    the credit forward all use the same attention code.

    Logged metrics (TRL's ``_metrics``, averaged per logging step): ``rhythm/gamma_mean`` and
    ``rhythm/amplified_share`` (over completion tokens in the loss mask), ``rhythm/<role>_share``
    for preplan, anchor, dominated and intro, ``rhythm/analysed_share`` (sequences with >= 2
    completion tokens that were analysed) and ``rhythm/seconds`` (wall time of the credit forward).
    """

    def __init__(self, *args: Any, rhythm: RhythmCreditConfig | None = None, **kwargs: Any) -> None:
        self.rhythm = rhythm if rhythm is not None else RhythmCreditConfig()
        if not isinstance(self.rhythm, RhythmCreditConfig):
            raise AttnRhythmError(f"rhythm must be a RhythmCreditConfig, not {type(self.rhythm).__name__}")
        super().__init__(*args, **kwargs)
        self._rhythm_analyzer: Analyzer | None = None
        if self.rhythm.strategy != "none":
            # switches the policy to the attnrhythm attention implementation now, before any generation
            self._rhythm_analyzer = Analyzer(self._rhythm_policy(), self.rhythm.analysis_config())

    # -- the hook -----------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        return self._apply_rhythm_credit(output)

    def _apply_rhythm_credit(self, output: dict[str, Any]) -> dict[str, Any]:
        """Replace ``output["advantages"]`` (B,) by rhythm-shaped (B, T) advantages (in place)."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if self.rhythm.strategy == "none":
            metrics["rhythm/gamma_mean"].append(1.0)
            metrics["rhythm/amplified_share"].append(0.0)
            metrics["rhythm/seconds"].append(0.0)
            return output
        if any(key in output for key in _IMAGE_KEYS):
            raise AttnRhythmError(
                "rhythm credit is text-only: this batch has images; use strategy 'none' for VLM training"
            )
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        started = time.perf_counter()
        with self._unwrapped_policy() as policy, torch.no_grad():
            if self._rhythm_analyzer is None or self._rhythm_analyzer.model is not policy:
                self._rhythm_analyzer = Analyzer(policy, self.rhythm.analysis_config())
            credit = rollout_gamma(
                self._rhythm_analyzer,
                self.rhythm.strategy,
                output["prompt_ids"],
                output["prompt_mask"],
                output["completion_ids"],
                output["completion_mask"],
                loss_mask,
                batch_size=self.rhythm.batch_size,
                seed_base=(self.state.global_step, self.accelerator.process_index),
            )
        output["advantages"] = shape_advantages(output["advantages"], credit.gamma, loss_mask)
        seconds = time.perf_counter() - started
        self._log_rhythm(metrics, credit.counts, seconds)
        return output

    # -- helpers ------------------------------------------------------------------------
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
        local = torch.tensor([counts[key] for key in _COUNT_KEYS], dtype=torch.float32)
        local = local.to(self.accelerator.device)
        totals = self.accelerator.gather(local).view(-1, len(_COUNT_KEYS)).sum(0).tolist()
        total = dict(zip(_COUNT_KEYS, totals))
        tokens = max(total["tokens"], 1.0)
        metrics["rhythm/gamma_mean"].append(total["gamma_sum"] / tokens if total["tokens"] else 1.0)
        metrics["rhythm/amplified_share"].append(total["amplified"] / tokens)
        for name in ROLE_NAMES:
            metrics[f"rhythm/{name}_share"].append(total[name] / tokens)
        metrics["rhythm/analysed_share"].append(total["analysed"] / max(total["sequences"], 1.0))
        elapsed = torch.tensor([seconds], dtype=torch.float32, device=self.accelerator.device)
        metrics["rhythm/seconds"].append(float(self.accelerator.gather(elapsed).max()))
