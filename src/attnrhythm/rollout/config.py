"""The rhythm credit settings of a GRPO trainer: engine-neutral (TRL and verl both read them).

:class:`RhythmCreditConfig` is composed, not copied: the strategy and the credit forward's own
knobs, and an :class:`~attnrhythm.analyze.AnalysisConfig` (which holds the
:class:`~attnrhythm.method.credit.CreditConfig`). Flat names still work everywhere
(``RhythmCreditConfig(q=0.3, window=4)``, ``settings.q``, YAML keys, verl's
``+trainer.v1.rhythm_grpo.q=0.3``); :class:`attnrhythm.settings.Composed` maps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnrhythm.config import AnalysisConfig
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import STRATEGIES, CreditConfig
from attnrhythm.settings import Composed, nested, setting

CREDIT_FORWARDS: tuple[str, ...] = ("auto", "fused", "separate")


@dataclass(init=False)
class RhythmCreditConfig(Composed):
    """How a GRPO trainer turns the policy's attention into per-token credit.

    Attributes:
        strategy: one of ``none``, ``random``, ``entropy``, ``local``, ``global``, ``coupled``
            (docs/method.md section 5). ``none`` is plain GRPO: no credit forward at all.
        analysis: the :class:`~attnrhythm.analyze.AnalysisConfig` of the credit forward (its
            ``credit`` holds q, amp, alpha, k, tau_waad, tau_delta, selection and the seed of the
            random baseline, which draws a fresh subset per sequence). Receiver heads are a
            study-only metric, so ``receiver_count`` is 0 here.
        batch_size: sequences per credit forward pass (the batch is cut into chunks of this size).
        credit_forward: where the attention statistics come from. ``separate``: one extra no-grad
            forward of the policy per rollout batch. ``fused`` (TRL): captured inside a forward TRL
            runs anyway, so no extra forward: the no-grad forward for ``old_per_token_logps`` where
            TRL runs one (``num_iterations > 1``, gradient accumulation not dividing the generation
            period, vLLM importance-sampling correction), else the loss forward of each
            micro-batch (the advantages are shaped before the loss is reduced). The ``entropy``
            strategy can be fused only into the loss forward at ``temperature`` 1.0 (its entropy is
            the untempered one); elsewhere ``fused`` is an error for it (raised by the trainer).
            ``fused`` (verl): captured in verl's own no-grad old-log-prob forward of the actor
            (``compute_log_prob``), in either of its layouts; not for the ``entropy`` strategy
            or Ulysses sequence parallelism (docs/verl.md).
            ``auto`` (default): ``fused`` where possible, else ``separate``.
    """

    strategy: str = setting("coupled", help="Credit strategy: none, random, entropy, local, global, coupled.")
    analysis: AnalysisConfig = nested(AnalysisConfig, receiver_count=0)
    batch_size: int = setting(8, help="Sequences per credit forward pass.", flag="--credit-batch-size")
    credit_forward: str = setting(
        "auto",
        help="auto, fused (captured in a forward the trainer runs anyway: old-logprob or loss), separate.",
    )

    _source = "the rhythm credit settings"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AttnRhythmError(
                f"unknown credit strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )
        if self.credit_forward not in CREDIT_FORWARDS:
            raise AttnRhythmError(
                f"bad credit forward {self.credit_forward!r}: use one of {', '.join(CREDIT_FORWARDS)}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise AttnRhythmError(f"bad credit batch size {self.batch_size}: it must be >= 1")

    def credit_config(self) -> CreditConfig:
        return self.analysis.credit

    def analysis_config(self) -> AnalysisConfig:
        return self.analysis
