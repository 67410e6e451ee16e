"""Options, consoles and helpers shared by every command group (one definition each)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from attnrhythm.config import AnalysisConfig, ModelSettings
from attnrhythm.settings import build, default, field_of, flag_of
from attnrhythm.train.runs import TrainSettings

# markup off: messages and help carry user text and brackets ("pip install 'attnrhythm[tasks]'",
# "[layer, head] pairs") that must print as written; styles come from rich Text objects
console = Console(stderr=True, markup=False, soft_wrap=True)  # a message is one line, even in a log
out_console = Console(markup=False)


def tagged(tag: str, text: str, style: str = "red", *, to: Console | None = None) -> None:
    """One line ``TAG text`` on stderr (or ``to``), the tag styled, the text exactly as given."""
    (to or console).print(Text(tag, style=style), text, highlight=False, soft_wrap=True)


def cli_default(value: Any) -> Any:
    """A setting's default as the command line writes it (the FAI horizon (10, 50) as ``10:50``)."""
    if isinstance(value, tuple):
        return ":".join("end" if v is None else str(v) for v in value)
    return value


def option(cls: type, name: str, *aliases: str, unset: bool = False, **changes: Any) -> Any:
    """A ``typer.Option`` made from the declaration of setting ``name`` in ``cls`` (flat name).

    Flag, short form, default and help text come from the one declaration
    (:func:`attnrhythm.settings.setting`). ``unset``: the option defaults to None (a flag not given
    leaves a settings file's value alone) and the help still shows the setting's default.
    ``aliases`` are further flag names; ``changes`` override typer.Option arguments.
    """
    f = field_of(cls, name)
    names = [flag_of(f), *aliases] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    value = cli_default(default(cls, name))
    kwargs: dict[str, Any] = {"help": f.metadata["help"], "show_default": True}
    if unset:
        kwargs["show_default"] = (
            "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )
        value = None
    kwargs.update(changes)
    return typer.Option(value, *names, **kwargs)


# Options shared by the commands (one definition each, from the settings' declarations).
ModelOpt = option(ModelSettings, "model")
DeviceOpt = option(ModelSettings, "device")
LayersOpt = option(AnalysisConfig, "layers")
WindowOpt = option(AnalysisConfig, "window")
HorizonOpt = option(AnalysisConfig, "fai_horizon")
QuantileOpt = option(AnalysisConfig, "head_quantile")
HeadsOpt = option(AnalysisConfig, "heads")
SinksOpt = option(AnalysisConfig, "sinks")
SinkTokensOpt = option(AnalysisConfig, "sink_tokens")
QOpt = option(AnalysisConfig, "q")
AmpOpt = option(AnalysisConfig, "amp")
AlphaOpt = option(AnalysisConfig, "alpha")
KOpt = option(AnalysisConfig, "k")
TauWOpt = option(AnalysisConfig, "tau_waad")
TauDOpt = option(AnalysisConfig, "tau_delta")
SelectionOpt = option(AnalysisConfig, "selection")
GammaNormOpt = option(AnalysisConfig, "gamma_norm")
TileOpt = option(AnalysisConfig, "tile_size")
ProximityOpt = option(AnalysisConfig, "proximity")
ReceiversOpt = option(AnalysisConfig, "receiver_count")
SaveMapsOpt = option(AnalysisConfig, "save_maps")
ChatOpt = option(TrainSettings, "chat")


def analysis_config(**values: Any) -> AnalysisConfig:
    """AnalysisConfig from flat flag values (credit flags go to its CreditConfig; --heads is read there)."""
    return build(AnalysisConfig, values, source="the flags")


class LineProgress:
    """Progress for a log or a pipe: a line on stderr every few items (``analysing: 8/20 (41 s)``).

    The same ``add_task``/``update`` calls as rich's Progress, which draws a bar on a terminal.
    """

    def __init__(self, target: Console, lines: int = 10, quiet_seconds: float = 2.0) -> None:
        self.console = target
        self.lines = lines  # about this many lines per task
        self.quiet_seconds = quiet_seconds  # work done sooner than this prints nothing
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        self.tasks.append(
            {"description": description, "total": total, "shown": 0, "started": time.monotonic()}
        )
        return len(self.tasks) - 1

    def update(
        self, task: int, *, completed: float | None = None, total: float | None = None, **_: Any
    ) -> None:
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if completed is None:
            return
        done, total = int(completed), state["total"]
        step = max(1, int(total) // self.lines) if total else 1
        elapsed = time.monotonic() - state["started"]
        if elapsed < self.quiet_seconds:
            return
        if done - state["shown"] >= step or (total and done >= total and state["shown"] < done):
            state["shown"] = done
            of = f"/{int(total)}" if total else ""
            self.console.print(f"{state['description']}: {done}{of} ({elapsed:.0f} s)", highlight=False)


@contextmanager
def working(text: str, quiet_seconds: float = 2.0) -> Iterator[None]:
    """A spinner with ``text`` on a terminal. In a log or a pipe: ``text`` as a line on stderr once the
    work has taken ``quiet_seconds`` and ``text: done (N s)`` when it ends; quicker work (or an early
    error) prints nothing."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    started = time.monotonic()
    timer = threading.Timer(quiet_seconds, lambda: console.print(text, highlight=False))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if time.monotonic() - started >= quiet_seconds:
        timer.join()  # its line first
        elapsed = time.monotonic() - started
        console.print(f"{text.removesuffix(' ...')}: done ({elapsed:.0f} s)", highlight=False)


def progress() -> Progress | LineProgress:
    """A progress bar on a terminal, else a line on stderr every few items."""
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def report_skipped(errors: list[str], *, shown: int = 5, total: int | None = None) -> None:
    """One ``skipped`` line per error for the first ``shown``, then one line for the rest."""
    for err in errors[:shown]:
        tagged("skipped", err, "yellow")
    if len(errors) > shown:
        of = f" of {total} lines" if total else ""
        tagged(
            "skipped",
            f"{len(errors) - shown} more lines ({len(errors)}{of} in all could not be read)",
            "yellow",
        )


def load(model: str, device: str):
    from attnrhythm.models import load_model

    with console.status(f"loading model {model} ..."):
        return load_model(model, device=device)
