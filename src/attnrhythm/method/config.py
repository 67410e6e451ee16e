"""The credit settings (docs/method.md sections 4-5), declared once: default, help text, flag.

Pure Python, so that the command line builds its options from them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnrhythm.errors import AttnRhythmError
from attnrhythm.settings import setting

ROLE_NAMES: tuple[str, ...] = ("preplan", "anchor", "dominated", "intro")  # docs/method.md section 4
STRATEGIES: tuple[str, ...] = ("none", "local", "global", "coupled", "entropy", "random")


@dataclass(frozen=True)
class CreditConfig:
    """Hyperparameters of the credit (docs/method.md section 4-5 defaults), each declared once."""

    q: float = setting(0.4, help="TopQ share of tokens selected as preplan / anchor.")
    amp: float = setting(1.5, help="Credit amplification of selected tokens.")
    alpha: float = setting(0.5, help="Share of a dominated anchor's credit moved to its intro token.")
    k: int = setting(3, help="Look-back (tokens) for the introductory token of a dominated anchor.")
    tau_waad: float | None = setting(None, help="WAAD threshold for dominated anchors (default: median).")
    tau_delta: float | None = setting(None, help="Delta threshold for dominated anchors (default: median).")
    selection: str = setting("top", help="top, or bottom for the ablation.")
    seed: int = setting(0, help="Seed of the random credit baseline.")

    def __post_init__(self) -> None:
        if self.selection not in ("top", "bottom"):
            raise AttnRhythmError(f"bad selection {self.selection!r}: use 'top' or 'bottom'")
        if not 0 <= self.alpha <= 1:
            raise AttnRhythmError(f"bad alpha {self.alpha}: it must be in [0, 1]")
        if not 0 < self.q <= 1:
            raise AttnRhythmError(f"bad q {self.q}: it must be in (0, 1]")
        if self.amp <= 0:
            raise AttnRhythmError(f"bad amp {self.amp}: it must be > 0")
