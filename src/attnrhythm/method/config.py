"""The credit settings (docs/method.md sections 4-5), declared once: default, help text, flag.

Pure Python, so that the command line builds its options from them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnrhythm.errors import AttnRhythmError
from attnrhythm.settings import setting

ROLE_NAMES: tuple[str, ...] = ("preplan", "anchor", "dominated", "intro")  # docs/method.md section 4
STRATEGIES: tuple[str, ...] = ("none", "local", "global", "coupled", "entropy", "random")
GAMMA_NORMS: tuple[str, ...] = ("none", "mean")
SHAPES: tuple[str, ...] = ("positive", "both")


@dataclass(frozen=True)
class CreditConfig:
    """Hyperparameters of the credit (docs/method.md section 4-5 defaults), each declared once.

    Two knobs beyond section 5 (the defaults are the paper's rule; docs/training.md):

    * ``gamma_norm``: ``none`` keeps gamma as section 5 defines it; ``mean`` divides each
      response's gamma by its mean over the response's loss tokens (the completion mask in
      training, every response token in a record), so a per-response advantage keeps its mass.
    * ``shape``: ``positive`` scales only advantages A >= 0; ``both`` scales A < 0 too.
    """

    q: float = setting(0.4, help="TopQ share of tokens selected as preplan / anchor.")
    amp: float = setting(1.5, help="Credit amplification of selected tokens.")
    alpha: float = setting(0.5, help="Share of a dominated anchor's credit moved to its intro token.")
    k: int = setting(3, help="Look-back (tokens) for the introductory token of a dominated anchor.")
    tau_waad: float | None = setting(None, help="WAAD threshold for dominated anchors (default: median).")
    tau_delta: float | None = setting(None, help="Delta threshold for dominated anchors (default: median).")
    selection: str = setting("top", help="top, or bottom for the ablation.")
    seed: int = setting(0, help="Seed of the random credit baseline.")
    gamma_norm: str = setting(
        "none", help="none, or mean: each response's gamma divided by its mean over its loss tokens."
    )
    shape: str = setting(
        "positive", help="positive (gamma scales advantages >= 0 only, the paper), or both (negative too)."
    )

    def __post_init__(self) -> None:
        if self.gamma_norm not in GAMMA_NORMS:
            raise AttnRhythmError(f"bad gamma_norm {self.gamma_norm!r}: use one of {', '.join(GAMMA_NORMS)}")
        if self.shape not in SHAPES:
            raise AttnRhythmError(f"bad shape {self.shape!r}: use one of {', '.join(SHAPES)}")
        if self.selection not in ("top", "bottom"):
            raise AttnRhythmError(f"bad selection {self.selection!r}: use 'top' or 'bottom'")
        if not 0 <= self.alpha <= 1:
            raise AttnRhythmError(f"bad alpha {self.alpha}: it must be in [0, 1]")
        if not 0 < self.q <= 1:
            raise AttnRhythmError(f"bad q {self.q}: it must be in (0, 1]")
        if self.amp <= 0:
            raise AttnRhythmError(f"bad amp {self.amp}: it must be > 0")
