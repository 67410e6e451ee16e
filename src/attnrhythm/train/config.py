"""Configuration of the attention-rhythm credit used during GRPO training (no TRL needed here)."""

from __future__ import annotations

from dataclasses import dataclass

from attnrhythm.analyze import AnalysisConfig, load_heads_file
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.credit import STRATEGIES, CreditConfig
from attnrhythm.method.rhythm import parse_horizon

CREDIT_FORWARDS: tuple[str, ...] = ("auto", "fused", "separate")


@dataclass(frozen=True)
class HeadsOption:
    """The trainer's ``heads`` setting, parsed (:func:`parse_heads`).

    ``mode``: ``sequence`` (classes per sequence, METHOD.md's default), ``file`` (a fixed head set
    read from ``path``) or ``refresh`` (the corpus head set re-derived from the last ``every``
    steps' rollouts every ``every`` steps).
    """

    mode: str
    path: str | None = None
    every: int = 0


def parse_heads(value: str | None) -> HeadsOption:
    """``None``/``sequence``, ``refresh:K`` (K >= 1) or a head set file: the one parser of ``heads``."""
    if value is None or str(value).strip() in ("", "sequence"):
        return HeadsOption("sequence")
    text = str(value).strip()
    if text.startswith("refresh:") or text == "refresh":
        every = text.partition(":")[2]
        if not every.isdigit() or int(every) < 1:
            raise AttnRhythmError(
                f"bad heads {text!r}: write refresh:K with K >= 1 steps, e.g. refresh:20"
            )
        return HeadsOption("refresh", every=int(every))
    return HeadsOption("file", path=text)


def trl_runs_old_logps_forward(
    gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int, vllm_is: bool = False
) -> bool:
    """TRL 1.16's condition for its no-grad ``old_per_token_logps`` forward over each rollout batch.

    Gradient accumulation not a multiple of the generation period (``steps_per_generation x
    num_iterations``; with TRL's default ``steps_per_generation`` that is ``num_iterations > 1``),
    or vLLM importance-sampling correction (``vllm_is``).
    """
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0 or vllm_is


FUSED_NEEDS_OLD_LOGPS = (
    "credit_forward 'fused' needs TRL's old-logprob forward, which these settings skip (num_iterations "
    "is 1 and gradient accumulation divides the generation period): use 'auto' or 'separate', or "
    "num_iterations > 1"
)


@dataclass
class RhythmCreditConfig:
    """How :class:`RhythmGRPOTrainer` turns a policy's attention into per-token credit.

    Attributes:
        strategy: one of ``none``, ``random``, ``entropy``, ``local``, ``global``, ``coupled``
            (METHOD.md section 5). ``none`` is plain GRPO: no credit forward at all.
        q, amp, alpha, k, tau_waad, tau_delta, selection, seed, gamma_norm, shape: the fields of
            :class:`~attnrhythm.method.credit.CreditConfig` (``selection="bottom"`` is the ablation;
            ``seed`` seeds the random baseline, which draws a fresh subset per sequence;
            ``gamma_norm="mean"`` makes gamma's mean over each response's loss tokens 1;
            ``shape="both"`` scales negative advantages too).
        layers, window, fai_horizon, head_quantile: the analysis parameters of
            :class:`~attnrhythm.analyze.AnalysisConfig` (METHOD.md sections 1-3).
        heads: ``sequence`` (or None, the default): head classes per sequence; a head set file
            (a ``heads.json`` of ``attnrhythm heads``, or a JSON with ``local``/``global`` [layer,
            head] lists): fixed; ``refresh:K``: the corpus head set (``attnrhythm heads``' rule,
            :func:`attnrhythm.headsets.corpus_heads`) re-derived every K steps from the rollouts of
            the last K steps, per-sequence classes until the first refresh (:func:`parse_heads`).
        tile_size, logits_chunk: memory knobs of the streaming capture.
        batch_size: sequences per credit forward pass (the batch is cut into chunks of this size).
        credit_forward: where the attention statistics come from. ``separate``: one extra no-grad
            forward of the policy per rollout batch. ``fused``: captured inside the no-grad forward
            TRL itself runs for ``old_per_token_logps`` (when ``num_iterations > 1``, when gradient
            accumulation does not divide the generation period, or with vLLM importance-sampling
            correction), so no extra forward; an error when TRL runs no such forward or for the
            ``entropy`` strategy (its entropy needs the untempered logits of its own forward).
            ``auto`` (default): ``fused`` where possible, else ``separate``.
    """

    strategy: str = "coupled"
    # CreditConfig
    q: float = 0.4
    amp: float = 1.5
    alpha: float = 0.5
    k: int = 3
    tau_waad: float | None = None
    tau_delta: float | None = None
    selection: str = "top"
    seed: int = 0
    gamma_norm: str = "none"
    shape: str = "positive"
    # AnalysisConfig
    layers: str | list[int] = "mid5"
    window: int = 10
    fai_horizon: str | tuple[int, int | None] = (10, 50)
    head_quantile: float = 0.3
    heads: str | None = None
    tile_size: int | None = None
    logits_chunk: int = AnalysisConfig.logits_chunk
    # the credit forward
    batch_size: int = 8
    credit_forward: str = "auto"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AttnRhythmError(
                f"unknown credit strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )
        if self.credit_forward not in CREDIT_FORWARDS:
            raise AttnRhythmError(
                f"bad credit forward {self.credit_forward!r}: use one of {', '.join(CREDIT_FORWARDS)}"
            )
        if self.credit_forward == "fused" and self.strategy == "entropy":
            raise AttnRhythmError(
                "credit_forward 'fused' cannot give the entropy strategy its entropy (TRL's forward "
                "keeps tempered log-probs only): use 'auto' or 'separate'"
            )
        if self.batch_size < 1:
            raise AttnRhythmError(f"bad credit batch size {self.batch_size}: it must be >= 1")
        if not 0 < self.head_quantile <= 0.5:
            raise AttnRhythmError(f"bad head quantile {self.head_quantile}: it must be in (0, 0.5]")
        self.fai_horizon = parse_horizon(self.fai_horizon)
        # validate the rest by building the configs once
        self.credit_config()
        self.analysis_config()

    def credit_config(self) -> CreditConfig:
        return CreditConfig(
            q=self.q,
            amp=self.amp,
            alpha=self.alpha,
            k=self.k,
            tau_waad=self.tau_waad,
            tau_delta=self.tau_delta,
            selection=self.selection,
            seed=self.seed,
            gamma_norm=self.gamma_norm,
            shape=self.shape,
        )

    def analysis_config(self) -> AnalysisConfig:
        # receiver heads are a study-only metric: receiver_count=0 keeps them out of the credit forward
        fixed = heads_layers = None
        option = parse_heads(self.heads)
        if option.mode == "file":
            heads_layers, fixed = load_heads_file(option.path)
        return AnalysisConfig(
            layers=self.layers,
            window=self.window,
            fai_horizon=self.fai_horizon,
            head_quantile=self.head_quantile,
            heads=fixed,
            heads_layers=heads_layers,
            credit=self.credit_config(),
            tile_size=self.tile_size,
            logits_chunk=self.logits_chunk,
            receiver_count=0,
        )
